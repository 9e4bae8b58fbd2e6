"""Model behaviour beyond checkpoint equivalence: batching, presets, configs, tokenizer, processor."""

from __future__ import annotations

import copy
import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from f2lightning.model import Florence2, Florence2Config
from f2lightning.processor import Florence2Processor
from f2lightning.tasks import LOCATION_TOKENS, get_task
from tests.helpers.weights import randomize_


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomize_(Florence2(Florence2Config.preset("tiny", image_size=64)).eval(), std=0.1)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_batched_generation_equals_one_by_one(model, num_beams):
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(3, 3, 64, 64, generator=generator)
    prompts = [[0, 11, 12, 13, 14, 15, 2], [0, 21, 2], [0, 31, 32, 33, 2]]
    longest = max(map(len, prompts))
    input_ids = torch.tensor([p + [1] * (longest - len(p)) for p in prompts])
    mask = torch.tensor([[1] * len(p) + [0] * (longest - len(p)) for p in prompts])
    kwargs = {"max_new_tokens": 10, "num_beams": num_beams, "do_sample": False}
    batched = model.generate(pixels, input_ids, mask, **kwargs)
    assert len({tuple(row.tolist()) for row in batched}) == len(
        prompts
    )  # each sample generates its own tokens
    for i, prompt in enumerate(prompts):
        alone = model.generate(pixels[i : i + 1], torch.tensor([prompt]), **kwargs)[0]
        row = batched[i][: len(alone)]
        assert torch.equal(row, alone), i
        assert (batched[i][len(alone) :] == 1).all()  # only padding after the sample's own end


def test_compiled_image_encoder_gives_the_same_tokens_and_generations(model):
    model = copy.deepcopy(model)
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    input_ids = torch.tensor([[0, 11, 12, 2], [0, 21, 22, 2]])
    kwargs = {"max_new_tokens": 10, "num_beams": 3, "do_sample": False}
    with torch.no_grad():
        eager_tokens = model.encode_image(pixels)
    eager = model.generate(pixels, input_ids, **kwargs)
    keys = list(model.state_dict())
    torch._dynamo.reset()
    model.compile_image_encoder()
    with torch.no_grad():
        compiled_tokens = model.encode_image(pixels)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    torch.testing.assert_close(compiled_tokens, eager_tokens, rtol=1e-4, atol=1e-5)
    assert torch.equal(model.generate(pixels, input_ids, **kwargs), eager)
    assert list(model.state_dict()) == keys


def test_base_and_large_presets_match_table_15():
    base = Florence2Config.preset("base")
    assert base.vision.embed_dims == (128, 256, 512, 1024) and base.vision.depths == (1, 1, 9, 1)
    assert (base.text.encoder_layers, base.text.d_model, base.num_image_tokens) == (6, 768, 577)
    large = Florence2Config.preset("large")
    assert large.vision.embed_dims == (256, 512, 1024, 2048) and large.vision.num_heads == (8, 16, 32, 64)
    assert (large.text.encoder_layers, large.text.decoder_layers, large.text.d_model) == (12, 12, 1024)
    with torch.device("meta"):  # build the base model without allocating its weights
        params = sum(p.numel() for p in Florence2(base).parameters())
    assert 200e6 < params < 260e6  # paper: 232M


def test_config_round_trips_and_reads_transformers_config(tmp_path):
    config = Florence2Config.preset("tiny", text={"d_model": 96}, image_size=128)
    assert Florence2Config.from_dict(config.to_dict()) == config
    from f2lightning.model.checkpoints import transformers_config

    transformers_config(config.replace(image_token_id=5)).save_pretrained(tmp_path)
    again = Florence2Config.from_hf_config(tmp_path)
    assert again.vision == config.vision
    assert again.text.d_model == 96 and again.image_token_id == 5
    with pytest.raises(KeyError, match="tiny"):
        Florence2Config.preset("huge")
    (tmp_path / "config.json").write_text('{"vision_config": [1, 2]}')
    with pytest.raises(ValueError, match=r"config\.json: `vision_config` must be an object"):
        Florence2Config.from_hf_config(tmp_path)
    (tmp_path / "config.json").write_text('{"vision_config": ')
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON"):
        Florence2Config.from_hf_config(tmp_path)


def _saved_tiny(path, **overrides):
    """A tiny model saved in the transformers-native layout, described by config.json alone."""
    config = Florence2Config.preset("tiny", image_size=64, image_token_id=5, **overrides)
    Florence2(config).save_pretrained(path)
    (path / "f2lightning.json").unlink()  # so that config.json is what describes the model
    return json.loads((path / "config.json").read_text())


def test_vision_num_groups_other_than_num_heads_are_refused(tmp_path):
    # transformers gives the channel attention num_groups groups; timm's DaViT one number per stage for both.
    hf = _saved_tiny(tmp_path)
    assert hf["vision_config"]["num_groups"] == hf["vision_config"]["num_heads"] == [1, 2, 3, 4]
    hf["vision_config"]["num_groups"] = [1, 2, 3, 8]
    (tmp_path / "config.json").write_text(json.dumps(hf))
    message = r"config\.json: vision_config\.num_groups \[1, 2, 3, 8\] differs from vision_config\.num_heads \[1, 2, 3, 4\]"
    with pytest.raises(ValueError, match=message):
        Florence2Config.from_hf_config(tmp_path)
    with pytest.raises(ValueError, match=message):
        Florence2.from_pretrained(tmp_path)


def test_saving_writes_the_num_groups_that_were_loaded(tmp_path):
    hf = _saved_tiny(tmp_path / "a", vision={"num_heads": (2, 2, 4, 4)})
    assert hf["vision_config"]["num_groups"] == [2, 2, 4, 4]
    model = Florence2.from_pretrained(tmp_path / "a")
    model.save_pretrained(tmp_path / "b")
    again = json.loads((tmp_path / "b" / "config.json").read_text())["vision_config"]
    assert again["num_heads"] == again["num_groups"] == [2, 2, 4, 4]


@pytest.mark.parametrize(
    ("section", "field", "value", "message"),
    [
        # Consistent sizes that do not describe the weights: torch's "size mismatch" before.
        ("text_config", "d_model", 64, r"text_config\.vocab_size, text_config\.d_model: 5 parameter\(s\), e\.g\. "
         r"language_model\.final_logits_bias|shared\.weight is \[4096, 128\] in the weights, \[4096, 64\] by the config"),
        ("vision_config", "embed_dim", [32, 64, 96, 64], r"vision_config\.embed_dim: \d+ parameter\(s\), e\.g\. vision_tower\.stages\.3\."),
        ("text_config", "encoder_ffn_dim", 256, r"text_config\.encoder_ffn_dim, text_config\.d_model: \d+ parameter\(s\), e\.g\. \S+encoder\.layers\.0\.fc1"),
        ("text_config", "max_position_embeddings", 256, r"text_config\.max_position_embeddings, text_config\.d_model: \d+ parameter\(s\), e\.g\. \S+embed_positions"),
        # Sizes that cannot build any model: an empty AssertionError from timm before.
        ("vision_config", "depths", [1, 1, 1], r"one entry per stage in vision_config\.embed_dim \[32, 64, 96, 128\], "
         r"vision_config\.depths \[1, 1, 1\]"),
        ("vision_config", "num_heads", [1, 2, 5, 4], r"vision_config\.embed_dim\[2\] = 96 is not divisible"),
        ("text_config", "encoder_attention_heads", 3, r"text_config\.d_model = 128 is not divisible by "
         r"text_config\.encoder_attention_heads = 3"),
        ("text_config", "decoder_layers", 0, r"text_config\.decoder_layers must be a positive integer, got 0"),
        ("text_config", "decoder_layers", 3, r"model built from .*config\.json.*missing: \['language_model\.model\.decoder\.layers\.2"),
    ],
)  # fmt: skip
def test_config_json_with_wrong_sizes_names_the_file_and_fields(tmp_path, section, field, value, message):
    hf = _saved_tiny(tmp_path)
    hf[section][field] = value
    if field == "num_heads":
        hf[section]["num_groups"] = value
    (tmp_path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(ValueError, match=str(tmp_path / "config.json").replace(".", r"\.")) as error:
        Florence2.from_pretrained(tmp_path)
    assert re.search(message, str(error.value), re.DOTALL), str(error.value)


def test_projector_rejects_images_beyond_the_position_table(model):
    with pytest.raises(ValueError, match="position table"):
        model.encode_image(torch.zeros(1, 3, 64 * 32, 64))


# ---------------------------------------------------------------------------- tokenizer
def test_trained_tokenizer_has_bart_specials_and_whole_location_tokens(tokenizer, tmp_path):
    assert [tokenizer.convert_tokens_to_ids(t) for t in ["<s>", "<pad>", "</s>", "<unk>"]] == [0, 1, 2, 3]
    ids = tokenizer("a red circle<loc_0><loc_999><poly>")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert {"<loc_0>", "<loc_999>", "<poly>"} <= set(tokens)
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a red circle<loc_0><loc_999><poly>"
    tokenizer.save_pretrained(tmp_path)
    from f2lightning.tokenizer import load_tokenizer

    reloaded = load_tokenizer(tmp_path)
    assert reloaded("hello <loc_5>")["input_ids"] == tokenizer("hello <loc_5>")["input_ids"]
    assert all(t in reloaded.get_vocab() for t in LOCATION_TOKENS)


def test_prepare_tokenizer_adds_missing_tokens_once(tokenizer):
    from f2lightning.tokenizer import prepare_tokenizer

    size = len(tokenizer)
    assert len(prepare_tokenizer(tokenizer)) == size


def test_resize_after_adding_tokens_keeps_old_rows(model):
    m = Florence2(Florence2Config.preset("tiny", image_size=64, text={"vocab_size": 100}))
    before = m.language_model.get_input_embeddings().weight.detach().clone()
    m.resize_token_embeddings(130, pad_to_multiple_of=64)
    after = m.language_model.get_input_embeddings().weight
    assert after.shape[0] == 192 == m.config.text.vocab_size
    assert torch.equal(after[:100], before)
    assert m.language_model.lm_head.weight.data_ptr() == after.data_ptr()  # still tied


# ---------------------------------------------------------------------------- processor
def _png_bytes(image: Image.Image, fmt: str = "PNG", **kwargs) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    buffer.seek(0)
    return Image.open(buffer)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "1", "LA"])
def test_processor_accepts_every_pillow_mode(tokenizer, mode):
    processor = Florence2Processor(tokenizer, image_size=64)
    image = Image.new("RGB", (40, 30), (200, 30, 30)).convert(mode)
    if mode == "I;16":
        image = Image.fromarray(np.linspace(0, 65535, 40 * 30).astype(np.uint16).reshape(30, 40))
    pixels = processor.preprocess_image(image)
    assert pixels.shape == (3, 64, 64) and torch.isfinite(pixels).all()
    if mode == "I;16":  # 16-bit range is stretched, not clipped to white
        assert pixels.std() > 0.5


def test_transparent_pixels_become_white(tokenizer):
    processor = Florence2Processor(tokenizer, image_size=32)
    clear = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    pixels = processor.preprocess_image(clear) * processor.std + processor.mean
    assert torch.allclose(pixels, torch.ones_like(pixels), atol=1e-5)


def test_exif_orientation_is_applied(tokenizer):
    image = Image.new("RGB", (40, 20), "red")
    image.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    jpeg = _png_bytes(image, "JPEG", exif=exif.tobytes(), quality=95)
    from f2lightning.images import to_rgb

    upright = to_rgb(jpeg)
    assert upright.size == (20, 40)
    top = np.asarray(upright)[2, 10]
    assert top[2] > 200 and top[0] < 60  # the blue half is now on top


def test_processor_batches_and_parses(tokenizer):
    processor = Florence2Processor(tokenizer, image_size=64)
    images = [Image.new("RGB", (30, 60)), Image.new("RGB", (100, 50))]
    batch = processor(
        images,
        ["<CAPTION>", "<REGION_TO_CATEGORY>"],
        regions=[None, [10, 10, 50, 40]],
        targets=["a red circle", "circle"],
    )
    assert batch["pixel_values"].shape == (2, 3, 64, 64)
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["attention_mask"][0].sum() != batch["attention_mask"][1].sum()
    assert (batch["labels"][batch["labels"] != -100] != tokenizer.pad_token_id).all()
    assert (batch["labels"] == -100).any()  # padding never counts in the loss
    prompt = tokenizer.decode(batch["input_ids"][1], skip_special_tokens=True)
    assert prompt.startswith("What is the region <loc_100><loc_200><loc_500><loc_800>")
    ids = torch.tensor([tokenizer("circle<loc_100><loc_200><loc_500><loc_666>")["input_ids"]])
    parsed = processor.post_process(ids, ["<OD>"], [(100, 50)])[0]
    assert parsed["labels"] == ["circle"]
    assert parsed["bboxes"][0] == pytest.approx([10.05, 10.025, 50.05, 33.325])


def test_language_init_copies_bart_and_keeps_the_rows_bart_lacks(tmp_path):
    from transformers import BartConfig, BartForConditionalGeneration

    from f2lightning.model.checkpoints import CheckpointError, init_language_model

    model = Florence2(Florence2Config.preset("tiny"))
    ours = model.language_model.config
    bart = BartForConditionalGeneration(BartConfig(**{**ours.to_dict(), "vocab_size": ours.vocab_size - 64}))
    bart.save_pretrained(tmp_path / "bart")
    extra_rows = model.language_model.model.shared.weight[-64:].detach().clone()
    init_language_model(model, tmp_path / "bart")
    state, source = model.language_model.state_dict(), bart.state_dict()
    for name, tensor in source.items():
        if name == "final_logits_bias":
            assert torch.equal(state[name][:, : tensor.shape[1]], tensor)
        else:
            assert torch.equal(state[name][: len(tensor)], tensor), name
    assert torch.equal(model.language_model.model.shared.weight[-64:], extra_rows)
    assert (
        model.language_model.lm_head.weight.data_ptr() == model.language_model.model.shared.weight.data_ptr()
    )
    # A BART with one decoder layer fewer does not fit: named, not loaded half-way.
    fewer = BartForConditionalGeneration(
        BartConfig(**{**ours.to_dict(), "decoder_layers": ours.decoder_layers - 1})
    )
    fewer.save_pretrained(tmp_path / "fewer")
    with pytest.raises(CheckpointError, match=r"missing model\.decoder\.layers\.\d+\."):
        init_language_model(model, tmp_path / "fewer")


def test_vision_init_loads_an_exported_backbone_strictly(tmp_path):
    from f2lightning.model.checkpoints import CheckpointError, export_backbone, init_vision_tower

    source = Florence2(Florence2Config.preset("tiny", image_token_id=5))
    source.save_pretrained(tmp_path / "src")
    summary = export_backbone(tmp_path / "src", tmp_path / "davit.pth")
    assert summary["arch"] == "tiny"
    model = Florence2(Florence2Config.preset("tiny"))
    init_vision_tower(model, tmp_path / "davit.pth")
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            model.vision_tower.state_dict().values(), source.vision_tower.state_dict().values(), strict=True
        )
    )
    wider = Florence2(
        Florence2Config.preset("tiny", vision={"embed_dims": (32, 64, 96, 256), "num_heads": (1, 2, 3, 4)})
    )
    with pytest.raises(CheckpointError, match="tensor shapes differ"):
        init_vision_tower(wider, tmp_path / "davit.pth")


def test_the_processor_is_saved_and_read_back_with_the_model(tokenizer, tmp_path):
    vocab = -(-len(tokenizer) // 64) * 64
    config = Florence2Config.preset(
        "tiny", image_size=64, image_mean=(0.5, 0.5, 0.5), image_std=(0.25, 0.25, 0.25),
        text={"vocab_size": vocab}, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )  # fmt: skip
    processor = Florence2Processor.for_model(config, tokenizer)
    processor.save_pretrained(Florence2(config).save_pretrained(tmp_path))
    loaded = Florence2Processor.from_pretrained(tmp_path)
    assert (loaded.image_size, loaded.mean.flatten().tolist(), loaded.std.flatten().tolist()) == (
        64, [0.5] * 3, [0.25] * 3)  # fmt: skip
    assert loaded.tokenizer.get_vocab() == tokenizer.get_vocab()
    small = config.replace(text={"vocab_size": len(tokenizer) - 1})
    with pytest.raises(ValueError, match="not the tokenizer this model was trained with"):
        Florence2Processor.for_model(small, tokenizer)
    (tmp_path / "tokenizer.json").unlink()
    for name in ("vocab.json", "tokenizer_config.json"):
        (tmp_path / name).unlink(missing_ok=True)
    with pytest.raises(ValueError, match="no tokenizer files"):
        Florence2Processor.from_pretrained(tmp_path)


def test_long_targets_are_cut_at_whole_boxes_and_counted(tokenizer):
    processor = Florence2Processor(tokenizer, image_size=64, max_target_length=30)
    size = (100, 100)
    boxes = {"bboxes": [[i, i, i + 10, i + 10] for i in range(20)], "labels": ["circle", "square"] * 10}
    od = get_task("<OD>").serialize(boxes, size)
    caption = "a red circle and a blue square " * 10
    short = "a red circle"
    fitted, events = processor.fit_targets(
        ["<OD>", "<CAPTION>", "<CAPTION>"], [od, caption, short], [size] * 3
    )
    assert [e["reason"] for e in events] == ["target_truncated_at_item", "target_truncated"]
    assert "<OD>: a " in events[0]["message"] and "max_target_length 30" in events[0]["message"]
    # OD keeps its first whole boxes: a prefix of the target, every box with its four corners, within the limit.
    kept = get_task("<OD>").parse(fitted[0], size)
    assert od.startswith(fitted[0]) and 0 < len(kept["bboxes"]) < 20
    assert kept["labels"] == boxes["labels"][: len(kept["bboxes"])]
    labels = processor.tokenize_targets(fitted)
    assert labels.shape[1] <= 30 and fitted[1:] == [caption, short]
    ends = [row[row != -100][-1].item() for row in labels]
    assert ends == [tokenizer.eos_token_id] * 3  # the end token survives every cut
