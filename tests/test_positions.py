"""`model.extend_positions`: a pretrained model's learned text positions grown for longer targets. The trained rows
and the outputs on what already fitted stay exactly as they were, the new rows start as copies, a long target then
trains, and the grown model saves, opens in transformers, reloads and resumes."""

from __future__ import annotations

import json
import re

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image
from transformers import Florence2ForConditionalGeneration

from f2lightning.checks import ConfigError
from f2lightning.data.datamodule import Florence2DataModule
from f2lightning.model import Florence2, Florence2Config
from f2lightning.model.checkpoints import extend_positions
from f2lightning.processor import Florence2Processor
from f2lightning.training import Florence2LitModule
from f2lightning.training.module import model_problems
from f2lightning.training.validation import validate_fit
from tests.helpers import training as helpers
from tests.helpers.weights import randomize_

TRAINED, GROWN = 64, 160  # positions of the "released" model, and after extension
OFFSET = 2  # BART's learned position table has two rows before position 0
BASE = object()  # stands for the base checkpoint's directory in parameters
CAPTION = " ".join(["a red circle and a blue square."] * 12)  # 98 tokens with <s> and </s>


@pytest.fixture(scope="module")
def base_dir(tokenizer, tmp_path_factory):
    """A random tiny Florence-2 with 64 text positions, saved like a released one (transformers layout and
    tokenizer)."""
    config = Florence2Config.preset(
        "tiny",
        image_size=64,
        text={"max_position_embeddings": TRAINED, "vocab_size": -(-len(tokenizer) // 64) * 64},
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(0)
    model = randomize_(Florence2(config), std=0.1)  # every position row distinct, outputs that depend on them
    path = model.save_pretrained(tmp_path_factory.mktemp("base"))
    Florence2Processor.for_model(config, tokenizer).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def long_captions(tokenizer, tmp_path_factory):
    """Four images whose caption is longer than the base's 64 positions."""
    assert TRAINED < len(tokenizer(CAPTION)["input_ids"]) <= 100
    folder = tmp_path_factory.mktemp("records")
    lines = []
    for i in range(4):
        Image.new("RGB", (64, 64), (60 * i, 255 - 60 * i, 90)).save(folder / f"{i}.png")
        lines.append(
            json.dumps({"image": f"{i}.png", "width": 64, "height": 64, "texts": {"brief": [CAPTION]}})
        )
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "train.jsonl"


def batch(target_length: int):
    generator = torch.Generator().manual_seed(3)
    pixel_values = torch.randn(2, 3, 64, 64, generator=generator)
    input_ids = torch.tensor([[0, 17, 45, 99, 23, 2], [0, 31, 2, 1, 1, 1]])  # right-padded with pad id 1
    decoder_input_ids = torch.randint(3, 300, (2, target_length), generator=generator)
    return pixel_values, input_ids, (input_ids != 1).long(), decoder_input_ids


def logits(model: Florence2, pixel_values, input_ids, attention_mask, decoder_input_ids) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(
            pixel_values, input_ids, attention_mask, decoder_input_ids=decoder_input_ids
        ).logits


def tables(model: Florence2) -> dict[str, torch.Tensor]:
    bart = model.language_model.model
    return {
        "encoder": bart.encoder.embed_positions.weight.detach().clone(),
        "decoder": bart.decoder.embed_positions.weight.detach().clone(),
    }


# ---------------------------------------------------------------------------- the extension itself
def test_extension_keeps_the_trained_rows_and_the_outputs_on_what_fitted(base_dir):
    model = Florence2.from_pretrained(base_dir)
    inputs = batch(TRAINED)  # every trained decoder position in use
    before, rows = logits(model, *inputs), tables(model)

    extend_positions(model, GROWN)

    assert torch.equal(logits(model, *inputs), before)
    for name, table in tables(model).items():
        assert table.shape == (GROWN + OFFSET, model.config.text.d_model), name
        assert torch.equal(table[: TRAINED + OFFSET], rows[name]), name
    # Every place that states the size follows: our config (saved), BART's (read by `generate`).
    assert model.config.text.max_position_embeddings == GROWN
    assert model.language_model.config.max_position_embeddings == GROWN
    # The start of the grown range answers too, where the old table had no row.
    assert logits(model, *batch(GROWN)).shape[1] == GROWN


def test_new_positions_start_as_copies_of_the_trained_ones_in_order(base_dir):
    model = Florence2.from_pretrained(base_dir)
    rows = tables(model)
    extend_positions(model, GROWN)
    new = torch.arange(TRAINED, GROWN)
    for name, table in tables(model).items():
        # Position p >= 64 starts as trained position p mod 64 (Longformer's tiling).
        assert torch.equal(table[OFFSET + new], rows[name][OFFSET + new % TRAINED]), name
    # At the size it has (a resumed run's model, built from its checkpoint's config) nothing is replaced.
    decoder_table = model.language_model.model.decoder.embed_positions.weight
    extend_positions(model, GROWN)
    assert model.language_model.model.decoder.embed_positions.weight is decoder_table
    with pytest.raises(ValueError, match=r"has 160 learned positions; extending them to 100 would drop some"):
        extend_positions(model, 100)


def test_the_saved_extended_model_opens_in_transformers_with_the_same_logits(base_dir, tmp_path):
    model = Florence2.from_pretrained(base_dir)
    extend_positions(model, GROWN)
    with torch.no_grad():  # the new rows moved away from their copies, as training moves them
        for stack in (model.language_model.model.encoder, model.language_model.model.decoder):
            new_rows = stack.embed_positions.weight[OFFSET + TRAINED :]
            new_rows += torch.randn(new_rows.shape) * 0.1
    saved = model.save_pretrained(tmp_path / "grown")

    theirs = Florence2ForConditionalGeneration.from_pretrained(saved).eval()
    assert theirs.config.text_config.max_position_embeddings == GROWN
    pixel_values, input_ids, attention_mask, decoder_input_ids = batch(150)  # 86 positions beyond the trained
    image_ids = torch.full((2, model.config.num_image_tokens), model.config.image_token_id)
    with torch.no_grad():
        expected = theirs(
            pixel_values=pixel_values,
            input_ids=torch.cat([image_ids, input_ids], dim=1),
            attention_mask=torch.cat([torch.ones_like(image_ids), attention_mask], dim=1),
            decoder_input_ids=decoder_input_ids,
        ).logits
    assert (
        logits(model, pixel_values, input_ids, attention_mask, decoder_input_ids) - expected
    ).abs().max() <= 1e-4

    again = Florence2.from_pretrained(saved)
    assert again.config.text.max_position_embeddings == GROWN
    ours = model.state_dict()
    assert all(torch.equal(value, ours[key]) for key, value in again.state_dict().items())


# ---------------------------------------------------------------------------- in a training run
def data_hparams(long_captions, base_dir) -> dict:
    return {
        "train_files": [str(long_captions)],
        "tokenizer": str(base_dir),
        "tasks": ["<CAPTION>"],
        "image_size": 64,
        "max_prompt_length": 32,  # 5 image tokens + 32 fit the encoder's 64 positions
        "max_target_length": 100,
    }


def extended_module(base_dir) -> Florence2LitModule:
    return Florence2LitModule(
        pretrained=str(base_dir),
        extend_positions=GROWN,
        lr=2e-3,
        warmup_steps=1,
        num_beams=1,
        log_predictions=0,
    )


def datamodule(long_captions, base_dir) -> Florence2DataModule:
    return Florence2DataModule(**data_hparams(long_captions, base_dir), batch_size=2, num_workers=0)


class Record(L.Callback):
    """Each step's loss, and the decoder position table's gradient of the first step."""

    def __init__(self):
        self.losses: list[float] = []
        self.gradient: torch.Tensor | None = None
        self.target_length = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.target_length = batch["labels"].shape[1]

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self.gradient is None:
            self.gradient = pl_module.model.language_model.model.decoder.embed_positions.weight.grad.clone()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item())


class StopAt(L.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def test_a_target_beyond_the_positions_is_refused_naming_the_option_and_trains_once_extended(
    base_dir, long_captions, tokenizer, tmp_path
):
    data = data_hparams(long_captions, base_dir)
    with pytest.raises(
        ConfigError,
        match=r"max_target_length 100 > the decoder's 64 positions; set model.extend_positions=100",
    ):
        validate_fit({"pretrained": str(base_dir)}, data)
    validate_fit({"pretrained": str(base_dir), "extend_positions": GROWN}, data)

    record = Record()
    helpers.trainer(tmp_path, 1, callbacks=[record]).fit(
        extended_module(base_dir), datamodule(long_captions, base_dir)
    )

    assert record.target_length == len(tokenizer(CAPTION)["input_ids"])
    assert len(record.losses) == 1 and torch.isfinite(torch.tensor(record.losses[0]))
    # Every position the target used got a gradient, the new ones included; the positions beyond it none.
    used = record.gradient[OFFSET : OFFSET + record.target_length]
    assert (used.abs().sum(1) > 0).all()
    assert not record.gradient[OFFSET + record.target_length :].any()


def test_an_extended_run_reloads_and_resumes_exactly(base_dir, long_captions, tmp_path):
    L.seed_everything(0)
    straight, straight_record = extended_module(base_dir), Record()
    helpers.trainer(tmp_path / "a", 2, callbacks=[straight_record]).fit(
        straight, datamodule(long_captions, base_dir)
    )

    L.seed_everything(0)
    first, record = extended_module(base_dir), Record()
    saving = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1)
    run = helpers.trainer(tmp_path / "b", 2, callbacks=[saving, record, StopAt(1)], enable_checkpointing=True)
    run.fit(first, datamodule(long_captions, base_dir))
    checkpoint = next((tmp_path / "ckpt").glob("*step=1.ckpt"))
    at_step_1 = {key: value.clone() for key, value in first.model.state_dict().items()}

    # The first step trained the new rows, so a resume that rebuilt them as fresh copies would differ below.
    fresh = Florence2.from_pretrained(base_dir)
    extend_positions(fresh, GROWN)
    decoder_table = "language_model.model.decoder.embed_positions.weight"
    assert not torch.equal(at_step_1[decoder_table], fresh.state_dict()[decoder_table])

    resumed = extended_module(base_dir)
    helpers.trainer(tmp_path / "c", 2, callbacks=[record]).fit(
        resumed, datamodule(long_captions, base_dir), ckpt_path=checkpoint
    )
    assert len(straight_record.losses) == 2 and record.losses == straight_record.losses
    theirs = straight.model.state_dict()
    assert all(torch.equal(value, theirs[key]) for key, value in resumed.model.state_dict().items())

    # Outside a run: the module rebuilds and grows the base, then reads the trained rows; our loader reads the
    # checkpoint's own config (160 positions) directly.
    for model in (
        Florence2LitModule.load_from_checkpoint(checkpoint).model,
        Florence2.from_pretrained(checkpoint),
    ):
        assert model.config.text.max_position_embeddings == GROWN
        assert all(torch.equal(value, at_step_1[key]) for key, value in model.state_dict().items())


# ---------------------------------------------------------------------------- settings
@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"extend_positions": 2048}, r"extend_positions copies trained positions and needs model.pretrained"),
        ({"extend_positions": 2048.0, "language_init": "bart"}, r"extend_positions must be a whole number"),
        ({"extend_positions": 32, "pretrained": BASE}, r"extend_positions=32 is below the 64 positions"),
        (
            {"extend_positions": 128, "pretrained": BASE, "freeze_language": True},
            r"with model.freeze_language:",
        ),
        ({"extend_positions": 128, "pretrained": BASE, "lora": {}}, r"with model.lora: the new positions"),
    ],
    ids=["from-scratch", "not-a-count", "shrink", "frozen", "lora"],
)
def test_settings_that_cannot_extend_are_refused(base_dir, settings, expected):
    hp = {key: str(base_dir) if value is BASE else value for key, value in settings.items()}
    assert any(re.search(expected, problem) for problem in model_problems(hp, files=False))
    with pytest.raises(ConfigError, match=expected):
        Florence2LitModule(**hp)


def test_extending_to_the_size_the_model_has_or_from_bart_weights_is_allowed(base_dir):
    # (With a BART start the preset's positions are the ones grown.)
    assert not model_problems({"pretrained": str(base_dir), "extend_positions": TRAINED}, files=False)
    assert not model_problems({"language_init": "bart", "extend_positions": 2048}, files=False)
