"""Florence2DaViT: same features as timm / f2lightning / transformers from every checkpoint source; freezing;
export; layer-wise LR decay."""

from __future__ import annotations

import argparse
import re

import pytest
import torch

pytest.importorskip("mmengine")
pytest.importorskip("mmdet")
pytest.importorskip("mmseg")

from mmengine.runner import load_checkpoint
from safetensors.torch import save_file
from transformers import Florence2Config as HFConfig
from transformers import Florence2ForConditionalGeneration

from downstream import Florence2DaViT
from downstream.layer_decay import layer_id
from f2lightning.model import Florence2
from f2lightning.model.checkpoints import (
    CheckpointError,
    export_backbone,
    load_state_dict,
    vision_tower_state_dict,
)
from f2lightning.model.commands import register_cli
from f2lightning.model.config import VisionConfig
from f2lightning.model.vision import create_vision_tower
from tests.helpers.weights import randomize_

pytestmark = pytest.mark.downstream

TINY = dict(embed_dims=(32, 64, 96, 128), depths=(1, 1, 2, 1), num_heads=(1, 2, 3, 4), window_size=4)
IMAGE_SIZE = 64


def _pretrained(path) -> dict:
    return dict(type="Pretrained", checkpoint=str(path))


@pytest.fixture(scope="module")
def hf_model() -> Florence2ForConditionalGeneration:
    torch.manual_seed(0)
    config = HFConfig(
        vision_config={
            "embed_dim": list(TINY["embed_dims"]),
            "depths": list(TINY["depths"]),
            "num_heads": list(TINY["num_heads"]),
            "num_groups": list(TINY["num_heads"]),
            "window_size": TINY["window_size"],
            "projection_dim": 64,
            "drop_path_rate": 0.0,
        },
        text_config={
            "model_type": "bart",
            "vocab_size": 320,
            "d_model": 64,
            "encoder_layers": 1,
            "decoder_layers": 1,
            "encoder_attention_heads": 4,
            "decoder_attention_heads": 4,
            "encoder_ffn_dim": 128,
            "decoder_ffn_dim": 128,
            "max_position_embeddings": 64,
        },
        image_token_id=319,
    )
    # Fresh inits leave norms at 1 / biases at 0, which would hide a swapped mapping: every tensor distinct.
    return randomize_(Florence2ForConditionalGeneration(config).eval())


@pytest.fixture(scope="module")
def hf_dir(hf_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("hf")
    hf_model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def transformers_features(hf_model, pixels) -> list[torch.Tensor]:
    """Per-stage features computed by transformers' own DaViT implementation."""
    tower = hf_model.model.vision_tower
    features, x = [], pixels
    with torch.no_grad():
        for conv, blocks in zip(tower.convs, tower.blocks):
            x = conv(x)
            for block in blocks:
                x = block(x)
            features.append(x)
    return features


@pytest.fixture(scope="module")
def reference(hf_dir, pixels) -> list[torch.Tensor]:
    """Per-stage features of timm's DaViT holding the transformers checkpoint's weights."""
    davit = create_vision_tower(VisionConfig(**TINY)).eval()
    davit.load_state_dict(vision_tower_state_dict(load_state_dict(hf_dir)))
    with torch.no_grad():
        return davit.forward_intermediates(pixels, intermediates_only=True)


def test_timm_reference_equals_transformers(reference, transformers_features):
    # Two implementations of the same maths: equal up to float32 rounding of features of magnitude ~5.
    for ours, theirs in zip(reference, transformers_features, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def exported(hf_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "davit.pth"
    summary = export_backbone(hf_dir, out)
    return out, summary


def _timm_to_remote_code(key: str) -> str:
    """timm DaViT key -> Microsoft remote-code Florence-2 key (the inverse of timm's checkpoint filter)."""
    key = re.sub(r"^stem\.conv\.", "convs.0.proj.", key)
    key = re.sub(r"^stem\.norm\.", "convs.0.norm.", key)
    key = re.sub(r"^stages\.(\d+)\.downsample\.conv\.", r"convs.\1.proj.", key)
    key = re.sub(r"^stages\.(\d+)\.downsample\.norm\.", r"convs.\1.norm.", key)
    key = re.sub(r"^stages\.(\d+)\.blocks\.", r"blocks.\1.", key)
    for timm_name, msft_name in [
        ("spatial_block.norm1.", "spatial_block.window_attn.norm."),
        ("spatial_block.attn.", "spatial_block.window_attn.fn."),
        ("channel_block.norm1.", "channel_block.channel_attn.norm."),
        ("channel_block.attn.", "channel_block.channel_attn.fn."),
        ("norm2.", "ffn.norm."),
        ("mlp.", "ffn.fn.net."),
        ("cpe1.proj.", "conv1.fn.dw."),
        ("cpe2.proj.", "conv2.fn.dw."),
    ]:
        key = key.replace(timm_name, msft_name)
    return "vision_tower." + key


def _write_source(kind: str, hf_dir, exported_path, tmp_path):
    """A checkpoint of the given layout holding the same weights as `hf_dir`."""
    if kind == "hf-dir":
        return hf_dir
    if kind == "hf-file":
        return hf_dir / "model.safetensors"
    if kind == "exported":
        return exported_path
    timm_state = torch.load(exported_path, weights_only=True)["state_dict"]
    if kind == "remote-code":
        state = {_timm_to_remote_code(k): v for k, v in timm_state.items()}
        state["image_projection"] = torch.randn(TINY["embed_dims"][-1], 64)
        path = tmp_path / "pytorch_model.bin"
        torch.save(state, path)
        return tmp_path  # a directory, as released
    if kind == "lightning":
        state = {f"model.vision_tower.{k}": v for k, v in timm_state.items()}
        state["model.projector.image_proj_norm.weight"] = torch.ones(64)
        path = tmp_path / "last.ckpt"
        torch.save({"state_dict": state, "epoch": 1, "global_step": 10}, path)
        return path
    if kind == "f2lightning":
        path = tmp_path / "model.safetensors"
        save_file({f"vision_tower.{k}": v.contiguous() for k, v in timm_state.items()}, path)
        return path
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["hf-dir", "hf-file", "remote-code", "lightning", "f2lightning", "exported"])
def test_features_match_from_every_source(kind, hf_dir, exported, reference, pixels, tmp_path):
    source = _write_source(kind, hf_dir, exported[0], tmp_path)
    backbone = Florence2DaViT(arch=TINY, init_cfg=_pretrained(source)).eval()
    backbone.init_weights()
    with torch.no_grad():
        features = backbone(pixels)
    assert len(features) == 4
    for ours, theirs, stride in zip(features, reference, (4, 8, 16, 32)):
        assert ours.shape[-1] == IMAGE_SIZE // stride
        assert (ours - theirs).abs().max() <= 1e-5


def test_features_match_timm_and_f2lightning(hf_dir, exported, pixels):
    backbone = Florence2DaViT(arch=TINY, init_cfg=_pretrained(exported[0])).eval()
    backbone.init_weights()
    timm_davit = create_vision_tower(VisionConfig(**TINY)).eval()
    timm_davit.load_state_dict(torch.load(exported[0], weights_only=True)["state_dict"])
    tower = Florence2.from_pretrained(hf_dir).vision_tower.eval()
    with torch.no_grad():
        ours = backbone(pixels)
        for other in (timm_davit, tower):
            theirs = other.forward_intermediates(pixels, intermediates_only=True)
            assert all((a - b).abs().max() <= 1e-5 for a, b in zip(ours, theirs, strict=True))


def test_out_indices_and_checkpointing_give_the_same_features(exported, pixels):
    full = Florence2DaViT(arch=TINY, init_cfg=_pretrained(exported[0])).eval()
    partial = Florence2DaViT(arch=TINY, out_indices=(1, 3), with_cp=True, init_cfg=_pretrained(exported[0]))
    full.init_weights()
    partial.init_weights()
    partial.eval()
    with torch.no_grad():
        a, b = full(pixels), partial(pixels)
    assert [t.shape[1] for t in b] == [64, 128]
    assert torch.equal(a[1], b[0]) and torch.equal(a[3], b[1])


def test_mismatched_checkpoint_names_the_keys(exported):
    wrong = dict(TINY, depths=(1, 1, 3, 1))
    backbone = Florence2DaViT(arch=wrong, init_cfg=_pretrained(exported[0]))
    with pytest.raises(CheckpointError, match=r"missing keys \(\d+\): stages\.2\.blocks\.2\."):
        backbone.init_weights()
    too_wide = Florence2DaViT(
        arch=dict(TINY, embed_dims=(32, 64, 96, 192)), init_cfg=_pretrained(exported[0])
    )
    with pytest.raises(CheckpointError, match="shapes differ"):
        too_wide.init_weights()


def test_export_writes_a_plain_backbone_checkpoint(exported, tmp_path, capsys):
    path, summary = exported
    assert summary["source_format"] == "hf"
    assert summary["embed_dims"] == list(TINY["embed_dims"]) and summary["depths"] == list(TINY["depths"])
    saved = torch.load(path, weights_only=True)
    assert set(saved) == {"state_dict", "meta"}
    assert all(k.startswith(("stem.", "stages.")) for k in saved["state_dict"])
    # mmengine's own loader (what PretrainedInit uses for other backbones) takes it with strict key matching.
    load_checkpoint(Florence2DaViT(arch=TINY), str(path), strict=True)

    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers())
    args = parser.parse_args(["export-backbone", str(path), "-o", str(tmp_path / "again.pth")])
    assert args.func(args) == 0
    assert "exported" in capsys.readouterr().out
    again = torch.load(tmp_path / "again.pth", weights_only=True)
    assert again["meta"]["source_format"] == "timm"
    assert all(torch.equal(again["state_dict"][k], v) for k, v in saved["state_dict"].items())


@pytest.mark.parametrize("frozen_stages", [0, 1, 2, 3, 4])
def test_frozen_stages_stay_fixed(frozen_stages):
    torch.manual_seed(0)
    backbone = Florence2DaViT(arch=TINY, drop_path_rate=0.1, frozen_stages=frozen_stages)
    stage_of = {name: _stage_of(name) for name, _ in backbone.named_parameters()}
    before = {name: p.detach().clone() for name, p in backbone.named_parameters()}
    trainable = [p for p in backbone.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2) if trainable else None
    backbone.train()
    for _ in range(2):
        loss = sum(f.square().mean() for f in backbone(torch.randn(2, 3, 32, 32)))
        if optimizer is not None:
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    for name, param in backbone.named_parameters():
        frozen = stage_of[name] <= frozen_stages
        assert param.requires_grad is not frozen, name
        assert torch.equal(param, before[name]) is frozen, name
    for name, module in backbone.named_modules():
        if name.startswith(("stem", "stages.")):
            assert module.training is not (_stage_of(name) <= frozen_stages), name


def _stage_of(name: str) -> int:
    """Paper numbering: the stem is in stage 1, `stages.i` is stage i + 1."""
    return 1 if name.startswith("stem") else int(name.split(".")[1]) + 1


def test_norm_eval_keeps_norms_in_eval_mode():
    backbone = Florence2DaViT(arch=TINY, norm_eval=True).train()
    norms = [m for m in backbone.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and not any(m.training for m in norms)
    assert backbone.stages[0].blocks[0].spatial_block.mlp.training


def test_layer_ids_follow_the_block_structure():
    depths = (1, 1, 9, 1)  # DaViT-B: 12 blocks
    assert layer_id("stem.conv.weight", depths, "layer_wise") == 0
    assert layer_id("stages.0.blocks.0.spatial_block.attn.qkv.weight", depths, "layer_wise") == 1
    assert layer_id("stages.2.downsample.conv.weight", depths, "layer_wise") == 3
    assert layer_id("stages.2.blocks.8.channel_block.mlp.fc1.weight", depths, "layer_wise") == 11
    assert layer_id("stages.3.blocks.0.spatial_block.norm1.weight", depths, "layer_wise") == 12
    assert layer_id("stem.norm.weight", depths, "stage_wise") == 1
    assert layer_id("stages.3.downsample.norm.bias", depths, "stage_wise") == 4
