"""Start-up checks of a training run: every contradiction reported at once, before any data is read.

Each part states its own rules where its values are defined (`f2lightning.data.datamodule.data_problems`,
`f2lightning.training.module.model_problems`) and its constructor raises them. What needs two parts together —
the model's position tables against the data's image size and prompt length, a checkpoint path on disk — is
checked here; `validate_fit` runs all of it from hyper-parameters only (the CLI calls it before it builds
anything), so a bad run fails in seconds, with one message, instead of after the first epoch's data loading.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from f2lightning.checks import ConfigError, is_count, is_path, raise_problems
from f2lightning.data.datamodule import data_problems
from f2lightning.model.config import Florence2Config
from f2lightning.training.module import model_config, model_problems

# `ckpt_path` values Lightning (or our CLI) resolves itself rather than reading as a file name.
SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")


def validate_fit(
    model_hparams: Mapping[str, Any], data_hparams: Mapping[str, Any] | None, ckpt_path: Any = None
) -> None:
    """Raise one `ConfigError` listing everything wrong with this model / data / checkpoint combination."""
    problems = model_problems(model_hparams)
    config = model_config(model_hparams)
    if data_hparams is not None:
        problems += data_problems(data_hparams)
        if config is not None:
            problems += position_problems(config, data_hparams)
    if (
        ckpt_path is not None
        and str(ckpt_path) not in SPECIAL_CKPT_PATHS
        and not is_path(ckpt_path, Path.is_file)
    ):
        problems.append(f"ckpt_path {ckpt_path} does not exist")
    raise_problems(problems)


def position_problems(config: Florence2Config, data_hp: Mapping[str, Any]) -> list[str]:
    """Image tokens + prompt share the encoder's position table; the target has the decoder's to itself; the
    data normalises pixels as the model was trained to see them."""
    image_size = data_hp.get("image_size", config.image_size)
    prompt, target = data_hp.get("max_prompt_length", 256), data_hp.get("max_target_length", 1024)
    if not (is_count(image_size) and is_count(prompt) and is_count(target)) or image_size % 32:
        return []  # reported by data_problems
    problems = []
    side = image_size // 32
    if side > config.vision.max_position_embeddings:
        problems.append(
            f"image_size {image_size} needs a {side}x{side} position table; the projector has "
            f"{config.vision.max_position_embeddings} per side (at most {config.vision.max_position_embeddings * 32} px)"
        )
    positions = config.text.max_position_embeddings
    image_tokens = side * side + 1
    if image_tokens + prompt > positions:
        problems.append(
            f"{image_tokens} image tokens (image_size {image_size}) + max_prompt_length {prompt} = "
            f"{image_tokens + prompt} > the encoder's {positions} positions; lower data.max_prompt_length to "
            f"{positions - image_tokens} or the image size"
        )
    if target > positions:
        problems.append(
            f"max_target_length {target} > the decoder's {positions} positions; set model.extend_positions={target} "
            'to grow the pretrained table (docs/training.md, "Targets longer than 1024 tokens"), or lower '
            "data.max_target_length (longer targets are then shortened and counted)"
        )
    for key in ("image_mean", "image_std"):
        data_value, model_value = data_hp.get(key), getattr(config, key)
        if data_value is not None and tuple(data_value) != tuple(model_value):
            problems.append(
                f"data.{key} {list(data_value)} is not the model's {list(model_value)}: set data.{key}"
            )
    return problems


__all__ = ["SPECIAL_CKPT_PATHS", "ConfigError", "position_problems", "validate_fit"]
