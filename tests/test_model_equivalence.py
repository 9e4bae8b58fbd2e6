"""Our composition equals transformers' Florence-2 with the same weights, in every checkpoint direction."""

from __future__ import annotations

import json
import re

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from transformers import Florence2Config as HFConfig
from transformers import Florence2ForConditionalGeneration

from f2lightning.model import Florence2
from f2lightning.model.checkpoints import CheckpointError, load_state_dict, vision_tower_state_dict
from tests.helpers.weights import randomize_

IMAGE_TOKEN_ID = 319
VOCAB = 320
IMAGE_SIZE = 64  # 2x2 feature map -> 5 image tokens


def _hf_config() -> HFConfig:
    return HFConfig(
        vision_config={
            "embed_dim": [32, 64, 96, 128],
            "depths": [1, 1, 2, 1],
            "num_heads": [1, 2, 3, 4],
            "num_groups": [1, 2, 3, 4],
            "window_size": 4,
            "projection_dim": 64,
            "drop_path_rate": 0.0,
        },
        text_config={
            "model_type": "bart",
            "vocab_size": VOCAB,
            "d_model": 64,
            "encoder_layers": 2,
            "decoder_layers": 2,
            "encoder_attention_heads": 4,
            "decoder_attention_heads": 4,
            "encoder_ffn_dim": 128,
            "decoder_ffn_dim": 128,
            "max_position_embeddings": 64,
            "dropout": 0.0,
        },
        image_token_id=IMAGE_TOKEN_ID,
    )


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = randomize_(Florence2ForConditionalGeneration(_hf_config()).eval())
    path = tmp_path_factory.mktemp("hf")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def hf_model(hf_dir):
    return Florence2ForConditionalGeneration.from_pretrained(hf_dir).eval()


@pytest.fixture(scope="module")
def batch():
    generator = torch.Generator().manual_seed(1)
    pixel_values = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    # Prompts of different lengths, right-padded with the pad id 1.
    input_ids = torch.tensor([[0, 17, 45, 99, 23, 2], [0, 31, 2, 1, 1, 1]])
    attention_mask = (input_ids != 1).long()
    labels = torch.tensor([[0, 55, 66, 77, 2], [0, 88, 2, -100, -100]])
    return pixel_values, input_ids, attention_mask, labels


def _hf_inputs(pixel_values, input_ids, attention_mask, num_image_tokens=5):
    batch_size = input_ids.shape[0]
    image_ids = torch.full((batch_size, num_image_tokens), IMAGE_TOKEN_ID)
    return {
        "pixel_values": pixel_values,
        "input_ids": torch.cat([image_ids, input_ids], dim=1),
        "attention_mask": torch.cat([torch.ones_like(image_ids), attention_mask], dim=1),
    }


def _assert_same_outputs(ours: Florence2, hf_model, batch) -> None:
    pixel_values, input_ids, attention_mask, labels = batch
    with torch.no_grad():
        expected = hf_model(**_hf_inputs(pixel_values, input_ids, attention_mask), labels=labels)
        actual = ours(pixel_values, input_ids, attention_mask, labels=labels)
    assert (actual.logits - expected.logits).abs().max() <= 1e-4
    assert torch.allclose(actual.loss, expected.loss, atol=1e-5)


def _assert_same_generations(ours: Florence2, hf_model, batch) -> None:
    pixel_values, input_ids, attention_mask, _ = batch
    for settings in ({"num_beams": 1}, {"num_beams": 3}):
        kwargs = {"max_new_tokens": 12, "do_sample": False, **settings}
        expected = hf_model.generate(**_hf_inputs(pixel_values, input_ids, attention_mask), **kwargs)
        actual = ours.generate(pixel_values, input_ids, attention_mask, **kwargs)
        assert torch.equal(actual, expected), settings
        # Not vacuous: the tokens depend on the image (each sample's, not its neighbour's).
        assert not torch.equal(
            ours.generate(pixel_values.flip(0), input_ids, attention_mask, **kwargs), actual
        )


def test_loads_transformers_checkpoint(hf_dir, hf_model, batch):
    ours = Florence2.from_pretrained(hf_dir).eval()
    _assert_same_outputs(ours, hf_model, batch)
    _assert_same_generations(ours, hf_model, batch)


def test_samples_sharing_an_image_match_transformers_fed_a_copy_each(hf_dir, hf_model, batch):
    """`image_index`: two prompts about image 0 and one about image 1, from two rows of `pixel_values`."""
    ours = Florence2.from_pretrained(hf_dir).eval()
    pixel_values, input_ids, attention_mask, labels = batch
    image_index = torch.tensor([0, 1, 0])
    rows = torch.tensor([0, 1, 1])  # the third sample repeats the second's prompt and target with image 0
    input_ids, attention_mask, labels = input_ids[rows], attention_mask[rows], labels[rows]
    copies = pixel_values[image_index]
    with torch.no_grad():
        expected = hf_model(**_hf_inputs(copies, input_ids, attention_mask), labels=labels)
        swapped = hf_model(
            **_hf_inputs(pixel_values[1 - image_index], input_ids, attention_mask), labels=labels
        )
        actual = ours(pixel_values, input_ids, attention_mask, labels=labels, image_index=image_index)
    # The logits move by units with the image, so the right images must match within float noise.
    assert (actual.logits - expected.logits).abs().max() <= 1e-4
    assert (actual.logits - swapped.logits).abs().max() >= 0.1
    assert torch.allclose(actual.loss, expected.loss, atol=1e-6)
    kwargs = {"max_new_tokens": 12, "do_sample": False, "num_beams": 3}
    expected_ids = hf_model.generate(**_hf_inputs(copies, input_ids, attention_mask), **kwargs)
    assert torch.equal(
        ours.generate(pixel_values, input_ids, attention_mask, image_index, **kwargs), expected_ids
    )


def test_save_pretrained_opens_in_transformers(hf_dir, hf_model, batch, tmp_path):
    ours = Florence2.from_pretrained(hf_dir).eval()
    ours.save_pretrained(tmp_path / "ours")
    reopened = Florence2ForConditionalGeneration.from_pretrained(tmp_path / "ours").eval()
    _assert_same_outputs(ours, reopened, batch)
    _assert_same_generations(ours, reopened, batch)
    # And the round trip through our own loader is lossless.
    again = Florence2.from_pretrained(tmp_path / "ours")
    for key, value in ours.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


# The Microsoft remote-code layout, written from the transformers layout with the renaming table of
# transformers' own conversion script (convert_florence2_original_pytorch_to_hf.py), run backwards.
_HF_TO_MSFT_VISION = [
    (r"convs\.(\d+)\.conv\.", r"convs.\1.proj."),
    (r"(spatial|channel)_block\.conv(\d)\.", r"\1_block.conv\2.fn.dw."),
    (r"spatial_block\.norm1\.", "spatial_block.window_attn.norm."),
    (r"channel_block\.norm1\.", "channel_block.channel_attn.norm."),
    (r"window_attn\.(qkv|proj)\.", r"window_attn.fn.\1."),
    (r"channel_attn\.(qkv|proj)\.", r"channel_attn.fn.\1."),
    (r"block\.norm2\.", "block.ffn.norm."),
    (r"ffn\.fc(\d)\.", r"ffn.fn.net.fc\1."),
]


def _write_msft_checkpoint(hf_dir, target):
    hf_state = load_file(hf_dir / "model.safetensors")
    msft = {}
    for key, value in hf_state.items():
        if key.startswith("model.vision_tower."):
            key = "vision_tower." + key.removeprefix("model.vision_tower.")
            for pattern, replacement in _HF_TO_MSFT_VISION:
                key = re.sub(pattern, replacement, key)
            msft[key] = value
        elif key == "model.multi_modal_projector.image_projection.weight":
            msft["image_projection"] = value.t().contiguous()
        elif key.startswith("model.multi_modal_projector."):
            name = key.removeprefix("model.multi_modal_projector.").replace(
                "image_position_embed", "image_pos_embed"
            )
            msft[name] = value
        elif key.startswith("model.language_model."):
            msft["language_model.model." + key.removeprefix("model.language_model.")] = value
    msft["language_model.lm_head.weight"] = hf_state["model.language_model.shared.weight"].clone()
    target.mkdir()
    save_file(msft, target / "model.safetensors")
    hf = _hf_config().to_dict()
    vision = hf["vision_config"]
    (target / "config.json").write_text(
        __import__("json").dumps(
            {
                "model_type": "florence2",
                "vision_config": {
                    "model_type": "davit",
                    "dim_embed": vision["embed_dim"],
                    "depths": vision["depths"],
                    "num_heads": vision["num_heads"],
                    "num_groups": vision["num_groups"],
                    "window_size": vision["window_size"],
                    "projection_dim": vision["projection_dim"],
                    "image_pos_embed": {"type": "learned_abs_2d", "max_pos_embeddings": 50},
                    "visual_temporal_embedding": {"type": "COSINE", "max_temporal_embeddings": 100},
                },
                "text_config": {k: v for k, v in hf["text_config"].items() if not k.startswith("_")},
                "vocab_size": VOCAB,
            }
        )
    )


def test_loads_microsoft_remote_code_layout(hf_dir, hf_model, batch, tmp_path):
    _write_msft_checkpoint(hf_dir, tmp_path / "msft")
    ours = Florence2.from_pretrained(tmp_path / "msft").eval()
    _assert_same_outputs(ours, hf_model, batch)
    _assert_same_generations(ours, hf_model, batch)


def test_vision_tower_equals_timm_davit(hf_dir, hf_model, batch):
    ours = Florence2.from_pretrained(hf_dir).eval()
    timm_davit = timm.create_model(
        "davit_base_fl",
        pretrained=False,
        num_classes=0,
        embed_dims=(32, 64, 96, 128),
        depths=(1, 1, 2, 1),
        num_heads=(1, 2, 3, 4),
        window_size=4,
        features_only=True,
        out_indices=(0, 1, 2, 3),
    ).eval()
    weights = vision_tower_state_dict(load_state_dict(hf_dir))
    # timm's feature wrapper flattens `stages.i` into `stages_i`.
    timm_davit.load_state_dict({re.sub(r"^stages\.(\d+)", r"stages_\1", k): v for k, v in weights.items()})
    pixel_values = batch[0]
    with torch.no_grad():
        features = timm_davit(pixel_values)
        _, intermediates = ours.vision_tower.forward_intermediates(pixel_values)
        hf_last = hf_model.model.vision_tower(pixel_values).last_hidden_state
    assert [f.shape[1] for f in features] == [32, 64, 96, 128]
    for ours_map, timm_map in zip(intermediates, features, strict=True):
        assert (ours_map - timm_map).abs().max() <= 1e-5
    # transformers' DaViT orders some float ops differently: equal to float32 noise on features of size ~10.
    torch.testing.assert_close(intermediates[-1], hf_last, rtol=1e-4, atol=1e-4)


def test_corrupt_checkpoint_names_the_file(tmp_path):
    broken = tmp_path / "model.safetensors"
    broken.write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_state_dict(broken)


def test_an_export_runs_in_plain_transformers_with_its_processor(tmp_path):
    # AutoProcessor + Florence2ForConditionalGeneration + generate + post_process_generation on what we save
    # reproduce our own processor, model and parser, token for token, and what `f2lightning predict` answers.
    from PIL import Image, ImageDraw
    from transformers import AutoProcessor

    from f2lightning.data.skips import SkipReport
    from f2lightning.inference.generation import GenerationSettings
    from f2lightning.inference.loading import load_model
    from f2lightning.inference.predict import build_requests, collect_images, predict
    from f2lightning.model import Florence2Config
    from f2lightning.processor import Florence2Processor
    from f2lightning.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(
        ["What does the image describe? a red circle on the left."] * 20, vocab_size=320
    )
    config = Florence2Config.preset(
        "tiny", image_size=64, text={"vocab_size": -(-len(tokenizer) // 64) * 64},
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )  # fmt: skip
    torch.manual_seed(0)
    ours = randomize_(Florence2(config), std=0.1).eval()
    processor = Florence2Processor.for_model(config, tokenizer)
    processor.save_pretrained(ours.save_pretrained(tmp_path))

    image = Image.new("RGB", (90, 70), "black")
    ImageDraw.Draw(image).ellipse([10, 10, 50, 50], fill="red")
    image.save(tmp_path / "image.png")
    requests = build_requests(collect_images([tmp_path / "image.png"], SkipReport()), ["<CAPTION>", "<OD>"])
    settings = GenerationSettings(batch_size=1, num_beams=1, max_new_tokens=12, num_workers=0, progress=False)
    predict(*load_model(tmp_path), requests, tmp_path / "predicted.jsonl", settings)
    predicted = {
        json.loads(line)["task"]: json.loads(line)
        for line in (tmp_path / "predicted.jsonl").read_text().splitlines()
    }
    theirs_processor = AutoProcessor.from_pretrained(tmp_path)
    theirs = Florence2ForConditionalGeneration.from_pretrained(tmp_path).eval()
    for task in ("<CAPTION>", "<OD>"):
        batch = processor([image], [task])
        inputs = theirs_processor(text=task, images=image, return_tensors="pt")
        torch.testing.assert_close(inputs["pixel_values"], batch["pixel_values"], atol=1e-2, rtol=0)
        kwargs = {**processor.generation_kwargs(task, num_beams=1), "max_new_tokens": 12}  # what predict uses
        with torch.no_grad():
            expected = theirs.generate(**inputs, **kwargs)
            actual = ours.generate(
                batch["pixel_values"], batch["input_ids"], batch["attention_mask"], **kwargs
            )
        assert expected.tolist() == actual.tolist(), task
        text = theirs_processor.batch_decode(expected, skip_special_tokens=False)[0]
        parsed = theirs_processor.post_process_generation(text, task=task, image_size=image.size)[task]
        mine = processor.post_process(actual, [task], [image.size])[0]
        answer = predicted[task]["result"][task]
        assert (
            predicted[task]["text"]
            == theirs_processor.batch_decode(expected[:, 1:], skip_special_tokens=False)[0]
        )
        assert (answer if task == "<CAPTION>" else {k: answer[k] for k in mine}) == mine
        if task == "<CAPTION>":
            assert parsed == mine
        else:  # transformers truncates box corners to whole pixels; we keep the bin centres (tests/test_tasks.py)
            assert parsed["labels"] == mine["labels"] and len(parsed["bboxes"]) == len(mine["bboxes"]) > 0
            torch.testing.assert_close(torch.tensor(parsed["bboxes"], dtype=torch.float64),
                                       torch.tensor(mine["bboxes"], dtype=torch.float64), atol=1.0, rtol=0)  # fmt: skip
