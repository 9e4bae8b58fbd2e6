"""Checkpoint formats: read any released Florence-2 layout, write the transformers-native one (docs/INTERFACES.md).

Formats, by their tell-tale keys:
- ``hf``: transformers' `Florence2ForConditionalGeneration` (`model.vision_tower.convs.0.conv.weight`, ...);
- ``msft``: Microsoft's remote-code Florence-2 (`vision_tower.convs.0.proj.weight`, `image_projection`, ...);
- ``f2lightning``: our `Florence2.state_dict()` (`vision_tower.stem.conv.weight`, timm keys);
- ``lightning``: a Lightning checkpoint of `Florence2LitModule` (the same keys under `model.`);
- ``timm``: a bare DaViT (`stem.conv.weight`), e.g. an exported backbone.
Untrusted files are read with safetensors or `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from timm.models.davit import checkpoint_filter_fn
from torch import nn
from transformers import GenerationConfig, PreTrainedTokenizerBase

from f2lightning.model.config import Florence2Config
from f2lightning.tokenizer import load_tokenizer

StateDict = dict[str, torch.Tensor]

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)

# transformers' DaViT key → timm's, applied in order to the key without its `model.vision_tower.` prefix.
_HF_TO_TIMM = [
    (r"^convs\.0\.", "stem."),
    (r"^convs\.(\d+)\.", r"stages.\1.downsample."),
    (r"^blocks\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2."),
    (r"\.conv1\.", ".cpe1.proj."),
    (r"\.conv2\.", ".cpe2.proj."),
    (r"\.(window_attn|channel_attn)\.", ".attn."),
    (r"\.ffn\.fc", ".mlp.fc"),
]
_TIMM_TO_HF = [
    (r"^stem\.", "convs.0."),
    (r"^stages\.(\d+)\.downsample\.", r"convs.\1."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.", r"blocks.\1.\2."),
    (r"\.cpe1\.proj\.", ".conv1."),
    (r"\.cpe2\.proj\.", ".conv2."),
    (r"spatial_block\.attn\.", "spatial_block.window_attn."),
    (r"channel_block\.attn\.", "channel_block.channel_attn."),
    (r"\.mlp\.fc", ".ffn.fc"),
]
_MSFT_PROJECTOR = {
    "image_proj_norm.weight": "projector.image_proj_norm.weight",
    "image_proj_norm.bias": "projector.image_proj_norm.bias",
    "image_pos_embed.row_embeddings.weight": "projector.image_position_embed.row_embeddings.weight",
    "image_pos_embed.column_embeddings.weight": "projector.image_position_embed.column_embeddings.weight",
    "visual_temporal_embed.pos_idx_to_embed": "projector.visual_temporal_embed.pos_idx_to_embed",
}
# Keys a loaded state dict may lack: tied copies of the shared embedding, and buffers we can rebuild.
_OPTIONAL_KEYS = {
    "language_model.model.encoder.embed_tokens.weight",
    "language_model.model.decoder.embed_tokens.weight",
    "language_model.lm_head.weight",
    "language_model.final_logits_bias",
    "projector.visual_temporal_embed.pos_idx_to_embed",
}


# Parameter (our key) → the config.json fields that set its shape, first match wins; a weights file whose
# shapes disagree with its config.json is reported with these instead of torch's bare "size mismatch".
_SHAPE_FIELDS = [
    (r"^vision_tower\..*\.mlp\.fc", "vision_config.embed_dim, vision_config.mlp_ratio"),
    (r"^vision_tower\.", "vision_config.embed_dim"),
    (r"^projector\.image_position_embed\.", "vision_config.max_position_embeddings, vision_config.embed_dim"),
    (
        r"^projector\.visual_temporal_embed\.",
        "vision_config.max_temporal_embeddings, vision_config.embed_dim",
    ),
    (r"^projector\.", "vision_config.embed_dim, text_config.d_model"),
    (r"\.embed_positions\.", "text_config.max_position_embeddings, text_config.d_model"),
    (r"(shared|embed_tokens|lm_head|final_logits_bias)", "text_config.vocab_size, text_config.d_model"),
    (r"\.(encoder|decoder)\.layers\.\d+\.fc", r"text_config.\1_ffn_dim, text_config.d_model"),
    (r"^language_model\.", "text_config.d_model"),
]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file."""


def _rename(key: str, rules: list[tuple[str, str]]) -> str:
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def find_weights(path: Path) -> Path:
    """The weights file of a checkpoint directory (or `path` itself when it is a file)."""
    if path.is_file():
        return path
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    for name in WEIGHT_FILES:
        if (path / name).exists():
            return path / name
    raise CheckpointError(f"{path}: no weights found (looked for {', '.join(WEIGHT_FILES)})")


def load_state_dict(path: str | Path) -> StateDict:
    """Tensors of a checkpoint file or directory: safetensors, sharded indexes, .bin / .pt / .pth / .ckpt."""
    file = find_weights(Path(path))
    try:
        if file.name.endswith(".index.json"):
            shards = sorted(set(json.loads(file.read_text())["weight_map"].values()))
            state: StateDict = {}
            for shard in shards:
                state.update(load_state_dict(file.parent / shard))
            return state
        if file.suffix == ".safetensors":
            return load_file(file)
        loaded = torch.load(file, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as error:  # truncated, corrupt or foreign files all end up here
        raise CheckpointError(
            f"{file}: cannot be read as a checkpoint ({type(error).__name__}: {error})"
        ) from error
    if isinstance(loaded, dict):
        for wrapper in ("state_dict", "model", "module"):
            if isinstance(loaded.get(wrapper), dict):
                loaded = loaded[wrapper]
                break
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(f"{file}: expected a mapping of tensor names to tensors")
    return loaded


def detect_format(state: StateDict) -> str:
    """`hf`, `msft`, `f2lightning`, `lightning` or `timm` (see the module docstring)."""
    if (
        "model.vision_tower.convs.0.conv.weight" in state
        or "model.multi_modal_projector.image_proj_norm.weight" in state
    ):
        return "hf"
    if "vision_tower.convs.0.proj.weight" in state or "image_projection" in state:
        return "msft"
    if "vision_tower.stem.conv.weight" in state:
        return "f2lightning"
    if "model.vision_tower.stem.conv.weight" in state:
        return "lightning"
    if "stem.conv.weight" in state:
        return "timm"
    sample = ", ".join(sorted(state)[:5])
    raise CheckpointError(f"unrecognised checkpoint layout (first keys: {sample})")


def to_f2lightning(state: StateDict) -> StateDict:
    """Any full-model format → `Florence2.state_dict()` keys."""
    kind = detect_format(state)
    if kind == "f2lightning":
        return dict(state)
    if kind == "lightning":
        return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    if kind == "hf":
        out: StateDict = {}
        for key, value in state.items():
            if key.startswith("model.vision_tower."):
                out["vision_tower." + _rename(key.removeprefix("model.vision_tower."), _HF_TO_TIMM)] = value
            elif key.startswith("model.multi_modal_projector."):
                out["projector." + key.removeprefix("model.multi_modal_projector.")] = value
            elif key.startswith("model.language_model."):
                out["language_model.model." + key.removeprefix("model.language_model.")] = value
            elif key == "lm_head.weight":
                out["language_model.lm_head.weight"] = value
        return out
    if kind == "msft":
        out = {"vision_tower." + k: v for k, v in checkpoint_filter_fn(state, None).items()}
        out["projector.image_projection.weight"] = state["image_projection"].t().contiguous()
        out.update({new: state[old] for old, new in _MSFT_PROJECTOR.items() if old in state})
        out.update({k: v for k, v in state.items() if k.startswith("language_model.")})
        return out
    raise CheckpointError("a bare DaViT checkpoint holds no projector or language model")


def vision_tower_state_dict(state: StateDict) -> StateDict:
    """The DaViT weights of any format, with timm's key names."""
    if detect_format(state) == "timm":
        return {k: v for k, v in state.items() if not k.startswith("head.")}
    prefix = "vision_tower."
    return {k.removeprefix(prefix): v for k, v in to_f2lightning(state).items() if k.startswith(prefix)}


def transformers_key(key: str) -> str | None:
    """The transformers-native name of one `Florence2.state_dict()` key, or of a key below one of its modules
    (a LoRA adapter's `<module>.lora_A.weight`); None for what transformers does not store (tied embedding
    copies, the tied LM head)."""
    if key.startswith("vision_tower."):
        return "model.vision_tower." + _rename(key.removeprefix("vision_tower."), _TIMM_TO_HF)
    if key.startswith("projector."):
        return "model.multi_modal_projector." + key.removeprefix("projector.")
    if key.startswith("language_model.model.") and ".embed_tokens." not in key:
        return "model.language_model." + key.removeprefix("language_model.model.")
    return None


def to_transformers(state: StateDict) -> StateDict:
    """`Florence2.state_dict()` → transformers-native keys (tied embedding copies dropped)."""
    return {new: value for key, value in state.items() if (new := transformers_key(key)) is not None}


def transformers_config(config: Florence2Config) -> Any:
    """The equivalent `transformers.Florence2Config` (written as config.json by `save_florence2`)."""
    import dataclasses

    from transformers import Florence2Config as HFFlorence2Config

    vision = config.vision
    return HFFlorence2Config(
        vision_config={
            "embed_dim": list(vision.embed_dims),
            "depths": list(vision.depths),
            "num_heads": list(vision.num_heads),
            # Loading refuses configs whose num_groups differ (config.from_hf_config), so this is what was read.
            "num_groups": list(vision.num_heads),
            "window_size": vision.window_size,
            "mlp_ratio": vision.mlp_ratio,
            "drop_path_rate": vision.drop_path_rate,
            "projection_dim": config.text.d_model,
            "max_position_embeddings": vision.max_position_embeddings,
            "max_temporal_embeddings": vision.max_temporal_embeddings,
        },
        text_config={"model_type": "bart", **dataclasses.asdict(config.text)},
        image_token_id=config.image_token_id,
    )


def _config_file(path: Path) -> Path:
    folder = path if path.is_dir() else path.parent
    # Our own save also records what transformers' config.json cannot hold (the input resolution).
    for name in ("f2lightning.json", "config.json"):
        if (folder / name).exists():
            return folder / name
    raise CheckpointError(f"{path}: no config.json beside the weights, cannot tell the model's size")


def _read_config(file: Path) -> Florence2Config:
    if file.name == "config.json":
        return Florence2Config.from_hf_config(file)
    config = Florence2Config.from_dict(json.loads(file.read_text()))
    config.check(str(file))
    return config


@dataclass(frozen=True)
class Florence2Checkpoint:
    """What a saved Florence-2 holds, read from any supported layout, for `Florence2.from_pretrained` to build."""

    config: Florence2Config
    state_dict: StateDict  # `Florence2.state_dict()` keys
    source: Path
    config_source: str  # where the sizes came from, named by `load_weights` when the weights do not fit


def read_florence2(path: Path, **config_overrides: Any) -> Florence2Checkpoint:
    """A checkpoint directory or file (transformers-native, remote code, ours, or a Lightning `.ckpt`)."""
    if path.suffix == ".ckpt":
        checkpoint = _read_lightning(path)
        config = Florence2Config.from_dict(checkpoint["f2lightning"]["model_config"])
        state, config_source = checkpoint["state_dict"], f"{path}'s model_config"
    else:
        config_file = _config_file(path)
        config, state, config_source = _read_config(config_file), load_state_dict(path), str(config_file)
    if config_overrides:
        config = config.replace(**config_overrides)
    return Florence2Checkpoint(config, to_f2lightning(state), path, config_source)


def read_tokenizer(path: Path) -> PreTrainedTokenizerBase | None:
    """The tokenizer saved with a checkpoint: the files beside the weights, or the directory a Lightning `.ckpt`
    recorded (when it is still there); None when there is none."""
    if path.suffix == ".ckpt":
        tokenizer_dir = _read_lightning(path, mmap=True)["f2lightning"].get("tokenizer_dir")
        return load_tokenizer(tokenizer_dir) if tokenizer_dir and Path(tokenizer_dir).is_dir() else None
    folder = path if path.is_dir() else path.parent
    has_tokenizer = any(
        (folder / name).exists() for name in ("tokenizer.json", "vocab.json", "tokenizer_config.json")
    )
    return load_tokenizer(folder) if has_tokenizer else None


def read_config(path: Path) -> Florence2Config:
    """A checkpoint's config alone (sizes, input resolution, normalisation), without its weights."""
    if path.suffix == ".ckpt":
        return Florence2Config.from_dict(_read_lightning(path, mmap=True)["f2lightning"]["model_config"])
    return _read_config(_config_file(path))


def _read_lightning(path: Path, mmap: bool = False) -> dict[str, Any]:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        checkpoint["f2lightning"]["model_config"]
    except Exception as error:
        raise CheckpointError(f"{path}: not a readable f2lightning Lightning checkpoint ({error})") from error
    return checkpoint


def load_weights(
    model: nn.Module,
    state: StateDict,
    source: Path | str = "state dict",
    config_source: Path | str = "the config",
) -> None:
    """Load converted weights, failing with the exact missing / unexpected / differently shaped parameters.

    `config_source` names where the model's sizes came from, so that a config that does not describe the
    weights is reported as such (with the fields that set each mismatching shape).
    """
    expected = model.state_dict()
    mismatched = [
        key for key, value in state.items() if key in expected and value.shape != expected[key].shape
    ]
    if mismatched:
        # One line per group of config fields, with a first example: a wrong d_model touches hundreds of tensors.
        by_fields: dict[str, list[str]] = {}
        for key in mismatched:
            by_fields.setdefault(_shape_fields(key), []).append(key)
        lines = [
            f"{fields}: {len(keys)} parameter(s), e.g. {keys[0]} is {list(state[keys[0]].shape)} in the weights, "
            f"{list(expected[keys[0]].shape)} by the config"
            for fields, keys in by_fields.items()
        ]
        raise CheckpointError(
            f"{source}: the weights do not have the sizes {config_source} gives ({len(mismatched)} parameters "
            "differ); check these fields:\n  " + "\n  ".join(lines)
        )
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in _OPTIONAL_KEYS]
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: weights do not fit the model built from {config_source} (check its depths / layer counts)."
            f"\n  missing: {missing[:20]}{' ...' if len(missing) > 20 else ''}"
            f"\n  unexpected: {unexpected[:20]}{' ...' if len(unexpected) > 20 else ''}"
        )


def _shape_fields(key: str) -> str:
    for pattern, fields in _SHAPE_FIELDS:
        match = re.search(pattern, key)
        if match:
            return match.expand(fields)
    return "see the config"


def save_florence2(
    path: Path,
    config: Florence2Config,
    state: StateDict,
    generation_config: GenerationConfig,
) -> Path:
    """Write `Florence2.state_dict()` weights in the transformers-native layout, with our own config beside it."""
    if config.image_token_id is None:
        raise ValueError(
            "config.image_token_id is unset: transformers' Florence-2 needs the id of an `<image>` token "
            "(f2lightning.tokenizer.prepare_tokenizer adds one)"
        )
    path.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in to_transformers(state).items()}
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    transformers_config(config).save_pretrained(path)
    generation_config.save_pretrained(path)
    (path / "f2lightning.json").write_text(json.dumps(config.to_dict(), indent=2))
    return path


# ----------------------------------------------------------------------------------------------- the DaViT alone
def backbone_state_dict(path: str | Path, prefix: str | None = None) -> tuple[StateDict, str]:
    """`(timm DaViT state dict, source format)` of any supported checkpoint file or directory; `prefix` takes the
    backbone out of a full MMDetection / MMSegmentation checkpoint (`'backbone.'`)."""
    state = load_state_dict(path)
    if prefix:
        state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise CheckpointError(f"{path}: no keys start with prefix {prefix!r}")
    source_format = detect_format(state)
    # A classifier head (ImageNet DaViT, or the remote-code tower's head) has no place in a backbone.
    backbone = {k: v for k, v in vision_tower_state_dict(state).items() if not k.startswith("head.")}
    return backbone, source_format


def load_backbone_weights(module: nn.Module, path: str | Path, prefix: str | None = None) -> str:
    """Load a checkpoint's DaViT into `module` (timm key names: our image encoder, MMDet's `Florence2DaViT`),
    raising on any missing, unexpected or differently shaped tensor; returns the source format."""
    state, source_format = backbone_state_dict(path, prefix)
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches: torch lists them, we add which file and what to check
        raise CheckpointError(
            f"{path} ({source_format} format): tensor shapes differ, is the arch right?\n{error}"
        ) from error
    if missing or unexpected:
        raise CheckpointError(
            f"{path} ({source_format} format) does not fit {type(module).__name__}; is the arch right?\n"
            f"  missing keys ({len(missing)}): {_preview(missing)}\n"
            f"  unexpected keys ({len(unexpected)}): {_preview(unexpected)}"
        )
    return source_format


def _preview(keys: list[str], limit: int = 20) -> str:
    return ", ".join(keys[:limit]) + (" ..." if len(keys) > limit else "") if keys else "none"


def infer_arch(state: StateDict) -> dict[str, Any]:
    """Widths and depths read off DaViT weights, and the preset whose image encoder they match (or None)."""
    from f2lightning.model.config import PRESETS

    num_stages = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"stages\.(\d+)\.", k)))
    embed_dims = [state["stem.conv.weight"].shape[0]]
    embed_dims += [state[f"stages.{i}.downsample.conv.weight"].shape[0] for i in range(1, num_stages)]
    depths = [
        1 + max(int(m.group(1)) for k in state if (m := re.match(rf"stages\.{i}\.blocks\.(\d+)\.", k)))
        for i in range(num_stages)
    ]
    visions = {name: preset().vision for name, preset in PRESETS.items()}
    name = next(
        (n for n, v in visions.items() if [*v.embed_dims] == embed_dims and [*v.depths] == depths), None
    )
    return {"arch": name, "embed_dims": embed_dims, "depths": depths}


def export_backbone(src: str | Path, out: str | Path, prefix: str | None = None) -> dict[str, Any]:
    """Write `src`'s DaViT as `{'state_dict': {timm keys}, 'meta': {...}}`, what MMDetection / MMSegmentation read
    from `init_cfg=dict(type='Pretrained', checkpoint=out)`; returns (and prints) a summary."""
    state, source_format = backbone_state_dict(src, prefix=prefix)
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    meta = {
        "source": str(src),
        "source_format": source_format,
        **infer_arch(state),
        "num_tensors": len(state),
        "num_parameters": sum(v.numel() for v in state.values()),
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "meta": meta}, out)
    print(
        f"exported {meta['num_tensors']} tensors ({meta['num_parameters'] / 1e6:.1f}M parameters) "
        f"of a DaViT {meta['arch'] or 'custom'} (embed_dims={meta['embed_dims']}, depths={meta['depths']}) "
        f"from {src} [{source_format} format] to {out}"
    )
    return {**meta, "out": str(out)}


# ----------------------------------------------------------------------------------------------- initialisation
def init_vision_tower(model: nn.Module, path: str | Path) -> None:
    """Copy DaViT weights from any supported checkpoint into `model.vision_tower` (strict, clear errors)."""
    load_backbone_weights(model.vision_tower, path)


def init_language_model(model: nn.Module, path: str | Path) -> None:
    """Start `model.language_model` from a BART checkpoint (a transformers directory); rows of tokens BART lacks
    (location tokens, ...) keep their random init. Every other tensor must match in name and shape."""
    from transformers import BartForConditionalGeneration

    ours = model.language_model
    bart = BartForConditionalGeneration.from_pretrained(path)
    mine, theirs = ours.state_dict(), bart.state_dict()
    state, problems = {}, []
    for name, tensor in mine.items():
        source = theirs.get(name)
        if source is None:
            problems.append(f"missing {name}")
        elif source.shape == tensor.shape:
            state[name] = source
        elif (axis := _vocabulary_axis(source, tensor)) is not None:  # embeddings, LM bias: keep BART's rows
            rows = min(source.shape[axis], tensor.shape[axis])
            merged = tensor.clone()
            merged.narrow(axis, 0, rows).copy_(source.narrow(axis, 0, rows))
            state[name] = merged
        else:
            problems.append(f"{name}: BART {tuple(source.shape)}, ours {tuple(tensor.shape)}")
    problems += [f"unexpected {name}" for name in theirs if name not in mine]
    if problems:
        raise CheckpointError(
            f"{path}: BART weights do not fit the language model (d_model, layer counts, ffn sizes must match)\n  "
            + "\n  ".join(problems[:20])
        )
    ours.load_state_dict(state, strict=True)
    ours.tie_weights()


def _vocabulary_axis(source: torch.Tensor, tensor: torch.Tensor) -> int | None:
    """The one axis two tensors' shapes differ in (the vocabulary's, for embeddings and `final_logits_bias`)."""
    if source.ndim != tensor.ndim:
        return None
    axes = [i for i, (a, b) in enumerate(zip(source.shape, tensor.shape, strict=True)) if a != b]
    return axes[0] if len(axes) == 1 else None


def extend_positions(model: nn.Module, positions: int) -> None:
    """Grow a `Florence2`'s learned text positions to `positions` (targets longer than the trained table), in
    place; `model.config` follows, so the model saves and reloads with the new size, in transformers too.

    The encoder's table grows with the decoder's: BART has one `max_position_embeddings` for both, and so has
    transformers' Florence-2, which must open the export. Existing rows stay bit-identical, so inputs that fit the
    old table give the same outputs; new positions start as copies of the trained ones (`_tiled_positions`).
    """
    current = model.config.text.max_position_embeddings
    if positions < current:
        raise ValueError(
            f"the model has {current} learned positions; extending them to {positions} would drop some"
        )
    if positions == current:
        return
    language = model.language_model
    for stack in (language.model.encoder, language.model.decoder):
        table = stack.embed_positions
        grown = _tiled_positions(table.weight.detach(), positions, table.offset)
        table.weight = nn.Parameter(grown, requires_grad=table.weight.requires_grad)
        table.num_embeddings = grown.shape[0]
    language.model.encoder.max_source_positions = positions
    language.model.decoder.max_target_positions = positions
    # `generate` caps its default length at BART's setting and warns past it.
    language.config.max_position_embeddings = positions
    model.config.text.max_position_embeddings = positions


def _tiled_positions(table: torch.Tensor, positions: int, offset: int) -> torch.Tensor:
    """`table` (`offset` rows no position reads, as in BART, then one row per position) grown to `positions`: its
    rows kept, and new position `p` a copy of trained position `p mod n`, for `n` trained positions.

    Longformer extended RoBERTa's 512 positions to 4096 this way. Copies start the new rows with the statistics
    and local structure (how neighbouring positions differ) that the attention layers were trained on, so a
    fine-tune only has to tell the copies apart; random rows would start from nothing. Interpolating the table to
    the new length would move every trained position, and change the outputs on inputs that already fit.
    """
    trained = table[offset:]
    new = positions - len(trained)
    copies = trained.repeat(-(-new // len(trained)), 1)[:new]
    return torch.cat([table, copies])
