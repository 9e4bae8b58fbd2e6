"""LoRA through peft: only the adapters train, adapter-only checkpoints resume exactly, and both exports (the
merged model, the peft adapter) run in plain transformers with the LoRA model's logits."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from f2lightning.checks import ConfigError
from f2lightning.model import Florence2, Florence2Config
from f2lightning.model import lora as lora_adapters
from f2lightning.model.checkpoints import CheckpointError
from f2lightning.processor import Florence2Processor
from f2lightning.tokenizer import load_tokenizer
from f2lightning.training import Florence2LitModule
from f2lightning.training.module import model_problems
from tests.helpers import training as helpers
from tests.helpers.weights import randomize_

peft = pytest.importorskip("peft")

# Without dropout / drop-path two computations of one step are equal, so trajectories can be compared exactly.
NO_DROPOUT = {
    "vision": {**helpers.MICRO["vision"], "drop_path_rate": 0.0},
    "text": {**helpers.MICRO["text"], "dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0},
}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthetic")
    helpers.datamodule(path).prepare_data()  # the images and the tokenizer, once for the module
    return path


@pytest.fixture(scope="module")
def base_dir(synthetic, tmp_path_factory):
    """The `pretrained` base: a random micro Florence-2 saved transformers-native with the data's tokenizer."""
    tokenizer = load_tokenizer(synthetic / "tokenizer")
    config = Florence2Config.preset(
        "tiny",
        image_size=64,
        vision=NO_DROPOUT["vision"],
        text={**NO_DROPOUT["text"], "vocab_size": -(-len(tokenizer) // 64) * 64},
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(0)
    model = randomize_(Florence2(config), std=0.1)  # logits that depend on the image and the prompt
    path = model.save_pretrained(tmp_path_factory.mktemp("base"))
    Florence2Processor.for_model(config, tokenizer).save_pretrained(path)
    return path


def lora_module(base_dir, **lora):
    return helpers.module(pretrained=str(base_dir), lora={"rank": 4, "alpha": 8, "dropout": 0.0, **lora})


def built(base_dir, **lora):
    lit = lora_module(base_dir, **lora)
    lit.configure_model()  # with `pretrained` it builds without a trainer
    return lit


@torch.no_grad()
def randomize_adapters_(model: nn.Module, seed: int = 1) -> None:
    """peft starts B at 0 (the adapter adds nothing); random B makes the adapters change the outputs."""
    generator = torch.Generator().manual_seed(seed)
    for layer in lora_adapters.adapter_modules(model).values():
        weight = layer.lora_B[lora_adapters.ADAPTER].weight
        weight.copy_(torch.randn(weight.shape, generator=generator) * 0.5)


def adapter_names(model: nn.Module) -> set[str]:
    return {name for name, _ in model.named_parameters() if ".lora_" in name}


def batch(config: Florence2Config):
    generator = torch.Generator().manual_seed(2)
    pixel_values = torch.randn(2, 3, 64, 64, generator=generator)
    input_ids = torch.tensor([[0, 17, 45, 99, 23, 2], [0, 31, 2, 1, 1, 1]])  # right-padded with pad id 1
    labels = torch.tensor([[0, 55, 66, 77, 2], [0, 88, 2, -100, -100]])
    return pixel_values, input_ids, (input_ids != 1).long(), labels


def transformers_logits(hf_model, config: Florence2Config, pixel_values, input_ids, attention_mask, labels):
    """transformers' Florence-2 takes `<image>` placeholders where we prepend the image tokens."""
    image_ids = torch.full((input_ids.shape[0], config.num_image_tokens), config.image_token_id)
    with torch.no_grad():
        return hf_model(
            pixel_values=pixel_values,
            input_ids=torch.cat([image_ids, input_ids], dim=1),
            attention_mask=torch.cat([torch.ones_like(image_ids), attention_mask], dim=1),
            labels=labels,
        ).logits


def our_logits(model: Florence2, pixel_values, input_ids, attention_mask, labels):
    with torch.no_grad():
        return model.eval()(pixel_values, input_ids, attention_mask, labels=labels).logits


# ---------------------------------------------------------------------------- what trains
def test_one_optimizer_step_moves_only_the_adapters(synthetic, base_dir, tmp_path):
    class Snapshot(L.Callback):
        def on_train_start(self, trainer, pl_module):
            randomize_adapters_(pl_module.model)  # so that A gets gradients too, not only weight decay
            self.before = {k: v.clone() for k, v in pl_module.model.state_dict().items()}
            self.optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}

    lit, snapshot = lora_module(base_dir, preset="all"), Snapshot()
    helpers.trainer(tmp_path, 1, callbacks=[snapshot]).fit(lit, helpers.datamodule(synthetic))

    adapters = adapter_names(lit.model)
    parameters = dict(lit.model.named_parameters())
    assert snapshot.optimized == {id(parameters[name]) for name in adapters}
    after = lit.model.state_dict()
    base = [key for key in after if ".lora_" not in key]
    assert len(base) > 100 and all(torch.equal(after[key], snapshot.before[key]) for key in base)
    assert all(not torch.equal(after[name], snapshot.before[name]) for name in adapters)


def test_presets_adapt_the_layers_they_name():
    tiny_config = Florence2Config.preset("tiny", image_size=64, **helpers.MICRO)
    counts = {}
    for preset in lora_adapters.PRESETS:
        model = lora_adapters.apply(Florence2(tiny_config), lora_adapters.LoraSettings(rank=2, preset=preset))
        names = set(lora_adapters.adapter_modules(model))
        counts[preset] = len(names)
        assert "language_model.lm_head" not in names  # tied to the token embedding
        assert any(n.startswith("projector.") for n in names) == (preset != "language")
        assert any(n.startswith("vision_tower.") for n in names) == (preset == "all")
        assert {n for n, p in model.named_parameters() if p.requires_grad} == adapter_names(model)
    # BART's layers: 6 linears per encoder layer, 10 per decoder layer; all of them are in `language`.
    text = tiny_config.text
    assert counts["language"] == 6 * text.encoder_layers + 10 * text.decoder_layers
    assert counts["language"] + 1 == counts["all_linear"] < counts["all"]
    custom = lora_adapters.LoraSettings(target_modules=["q_proj", "v_proj"])
    assert (
        len(custom.target_names(Florence2(tiny_config))) == 2 * text.encoder_layers + 4 * text.decoder_layers
    )
    with pytest.raises(ValueError, match="shares its weight with the token embedding"):
        lora_adapters.LoraSettings(target_modules=["lm_head"]).target_names(Florence2(tiny_config))


def test_the_frozen_base_stays_frozen_through_train(base_dir):
    lit = built(base_dir, preset="all_linear")
    adapters = adapter_names(lit.model)
    for mode in (True, False, True):
        lit.train(mode)
        assert {n for n, p in lit.model.named_parameters() if p.requires_grad} == adapters
    assert lit.model.training  # the adapters' own dropout works as in any LoRA run
    assert isinstance(lit.model, Florence2)  # injected in place: our model, our forward


# ---------------------------------------------------------------------------- exports
def test_merged_export_opens_in_transformers_with_the_lora_models_logits(base_dir, tmp_path):
    from transformers import Florence2ForConditionalGeneration

    lit = built(base_dir, preset="all")
    randomize_adapters_(lit.model)
    inputs = batch(lit.model.config)
    expected = our_logits(lit.model, *inputs)
    adapted = set(lora_adapters.adapter_modules(lit.model))
    lit.export(tmp_path / "merged")

    merged = Florence2ForConditionalGeneration.from_pretrained(tmp_path / "merged").eval()
    assert (transformers_logits(merged, lit.model.config, *inputs) - expected).abs().max() <= 1e-4
    # Not vacuous: the adapters move the logits away from the base's.
    base = Florence2ForConditionalGeneration.from_pretrained(base_dir).eval()
    assert (transformers_logits(base, lit.model.config, *inputs) - expected).abs().max() >= 0.1
    # The training copy keeps its adapters and its outputs.
    assert set(lora_adapters.adapter_modules(lit.model)) == adapted
    assert torch.equal(our_logits(lit.model, *inputs), expected)
    assert (tmp_path / "merged" / "tokenizer_config.json").exists()


def test_peft_adapter_loads_onto_transformers_florence2_with_the_lora_models_logits(base_dir, tmp_path):
    from transformers import Florence2ForConditionalGeneration

    lit = built(base_dir, preset="all")
    randomize_adapters_(lit.model)
    inputs = batch(lit.model.config)
    expected = our_logits(lit.model, *inputs)
    lit.export_adapter(tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {
        p.name for p in (tmp_path / "adapter").iterdir()
    }

    # The base exactly as `Florence2.save_pretrained` exports it.
    base = Florence2ForConditionalGeneration.from_pretrained(base_dir)
    with_adapter = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    assert len(with_adapter.base_model.targeted_module_names) == len(lora_adapters.adapter_modules(lit.model))
    assert (transformers_logits(with_adapter, lit.model.config, *inputs) - expected).abs().max() <= 1e-4


# ---------------------------------------------------------------------------- checkpoints
class StopAt(L.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            trainer.should_stop = True


class Losses(L.Callback):
    def __init__(self):
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item())


def test_an_adapter_only_checkpoint_resumes_exactly(synthetic, base_dir, tmp_path):
    def data():
        return helpers.datamodule(synthetic, batch_size=2, epoch_length=16)

    L.seed_everything(0)
    straight, straight_losses = lora_module(base_dir), Losses()
    helpers.trainer(tmp_path / "a", 4, callbacks=[straight_losses]).fit(straight, data())

    L.seed_everything(0)
    first, losses = lora_module(base_dir), Losses()
    saving = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    run = helpers.trainer(tmp_path / "b", 4, callbacks=[saving, losses, StopAt(2)], enable_checkpointing=True)
    run.fit(first, data())
    checkpoint = next((tmp_path / "ckpt").glob("*step=2.ckpt"))

    saved = torch.load(checkpoint, weights_only=True)
    model_keys = [key for key in saved["state_dict"] if key.startswith("model.")]
    assert model_keys and all(".lora_" in key for key in model_keys)
    assert saved["f2lightning"]["lora"]["base"] == str(base_dir)
    base_bytes = sum(p.numel() * p.element_size() for p in straight.model.parameters())
    assert checkpoint.stat().st_size < base_bytes / 4

    L.seed_everything(123)  # resuming must not depend on the RNG state
    resumed = lora_module(base_dir)
    helpers.trainer(tmp_path / "c", 4, callbacks=[losses]).fit(resumed, data(), ckpt_path=checkpoint)

    assert len(straight_losses.losses) == 4
    assert losses.losses == straight_losses.losses
    ours, theirs = resumed.model.state_dict(), straight.model.state_dict()
    assert all(torch.equal(ours[key], theirs[key]) for key in theirs)

    # Outside a run (to export it): the base comes from `pretrained`, the adapter from the file.
    reloaded = Florence2LitModule.load_from_checkpoint(checkpoint)
    at_step_2, read = (
        lora_adapters.adapter_state_dict(first.model),
        lora_adapters.adapter_state_dict(reloaded.model),
    )
    assert read.keys() == at_step_2.keys() and all(torch.equal(read[k], at_step_2[k]) for k in at_step_2)
    with pytest.raises(CheckpointError, match="holds only LoRA adapter weights on the base"):
        Florence2LitModule.load_from_checkpoint(checkpoint, lora=None)


# ---------------------------------------------------------------------------- settings
def test_model_problems_name_bad_lora_settings(monkeypatch, base_dir):
    def problems(**lora):
        return "\n".join(model_problems({"pretrained": str(base_dir), "lora": lora}, files=False))

    assert (
        "model.lora.preset 'everything' is not a preset; choose one of ['all', 'all_linear', 'language']"
        in (problems(preset="everything"))
    )
    assert "model.lora.rank must be a whole number >= 1, got 0" in problems(rank=0)
    assert "model.lora: unknown option(s) ['rnak']" in problems(rnak=8)
    assert "give preset or target_modules, not both" in problems(preset="all", target_modules=["q_proj"])
    assert "model.lora.dropout must be a number in [0, 1), got 1.5" in problems(dropout=1.5)
    assert problems(preset="language", rank=8) == ""
    assert "model.lora needs model.pretrained" in "\n".join(model_problems({"lora": {}}, files=False))
    frozen = model_problems({"pretrained": str(base_dir), "lora": {}, "freeze_vision": True}, files=False)
    assert "drop model.freeze_vision" in "\n".join(frozen)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a GPU machine
    assert lora_adapters.QLORA_MESSAGE in problems(quantize_4bit=True)
    with pytest.raises(
        ConfigError, match="QLoRA needs a CUDA GPU and bitsandbytes: pip install bitsandbytes"
    ):
        lora_module(base_dir, quantize_4bit=True)
