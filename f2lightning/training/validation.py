"""Start-up checks of a training configuration: every contradiction reported at once, before any data is read.

The constructors already reject what they can see alone (an unknown task token, an image size that is not a
multiple of 32). What needs two parts together — the model's position tables against the data's image size
and prompt length, a frozen stage against the model's depth, a checkpoint path on disk — is checked here,
from hyper-parameters only, so a bad run fails in seconds instead of after the first epoch's data loading.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from f2lightning.model.config import Florence2Config
from f2lightning.tasks import TASKS, UnknownTaskError, task_tokens

# `ckpt_path` values Lightning (or our CLI) resolves itself rather than reading as a file name.
SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")


class ConfigError(ValueError):
    """An impossible or contradictory training configuration; the message lists every problem found."""


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
        and not _is(ckpt_path, Path.is_file)
    ):
        problems.append(f"ckpt_path {ckpt_path} does not exist")
    if problems:
        raise ConfigError("invalid training configuration:\n  - " + "\n  - ".join(problems))


def model_config(hp: Mapping[str, Any]) -> Florence2Config | None:
    """The architecture the module will build, when it can be known without loading weights."""
    pretrained = hp.get("pretrained")
    try:
        if pretrained:
            if not _is(Path(str(pretrained)) / "config.json", Path.is_file):
                return None  # a .ckpt or a bare weights file: its config is only known once it is read
            config = Florence2Config.from_hf_config(Path(str(pretrained)) / "config.json")
        else:
            config = Florence2Config.preset(
                hp.get("preset", "tiny"), **dict(hp.get("config_overrides") or {})
            )
        image_size = hp.get("image_size")
        return config.replace(image_size=image_size) if image_size else config
    except (KeyError, TypeError, ValueError):
        return None  # reported by model_problems


def model_problems(hp: Mapping[str, Any]) -> list[str]:
    problems = []
    pretrained = hp.get("pretrained")
    if pretrained and not _is(pretrained, Path.exists):
        problems.append(f"model.pretrained {pretrained} does not exist")
    if not pretrained:
        try:
            Florence2Config.preset(hp.get("preset", "tiny"), **dict(hp.get("config_overrides") or {}))
        except (KeyError, TypeError, ValueError) as error:
            problems.append(f"model.preset / config_overrides: {error}")
    if not _positive(hp.get("lr", 1.0)):
        problems.append(f"model.lr must be a positive number, got {hp.get('lr')}")
    if not _positive(hp.get("vision_lr_scale", 1.0)):
        problems.append(
            f"model.vision_lr_scale must be a positive number, got {hp.get('vision_lr_scale')} "
            "(use model.freeze_vision to keep the image encoder fixed)"
        )
    hold_steps = hp.get("hold_encoders_steps", 0)
    if not (hold_steps == 0 or _count(hold_steps)):
        problems.append(f"model.hold_encoders_steps must be a whole number >= 0, got {hold_steps!r}")
    if not _count(hp.get("max_nonfinite_steps", 1)):
        problems.append(f"model.max_nonfinite_steps must be >= 1, got {hp.get('max_nonfinite_steps')}")
    config = model_config(hp)
    stages = hp.get("freeze_vision_stages", 0)
    if config is not None and not (
        stages == 0 or (_count(stages) and stages <= len(config.vision.embed_dims))
    ):
        problems.append(
            f"model.freeze_vision_stages={stages} is out of range: the vision tower has stages 1..{len(config.vision.embed_dims)}"
        )
    return problems


def data_problems(hp: Mapping[str, Any]) -> list[str]:
    tasks, weights = hp.get("tasks") or [], hp.get("task_weights") or {}
    if not isinstance(tasks, list | tuple) or not isinstance(weights, Mapping):
        return [
            f"data.tasks must be a list of task tokens and data.task_weights a mapping, got {tasks!r} / {weights!r}"
        ]
    problems = []
    try:
        task_tokens([*tasks, *weights])
    except UnknownTaskError as error:
        problems.append(f"data: {error}")
    bad_weights = {task: w for task, w in weights.items() if not _positive(w)}
    if bad_weights:
        problems.append(f"data.task_weights must be positive finite numbers, got {bad_weights}")
    if tasks and weights and set(weights) - set(tasks):
        problems.append(
            f"data.task_weights name tasks not in data.tasks: {sorted(map(str, set(weights) - set(tasks)))}"
        )
    warmup = hp.get("warmup_task_weights") or {}
    if (
        not isinstance(warmup, Mapping)
        or not all(_positive(w) or w == 0 for w in warmup.values())
        or (warmup and not any(_positive(w) for w in warmup.values()))
    ):
        problems.append(
            f"data.warmup_task_weights must map tasks to non-negative numbers, one positive, got {warmup!r}"
        )
    elif set(warmup) - set(tasks or weights or TASKS):
        problems.append(
            f"data.warmup_task_weights name tasks that are not trained on: {sorted(map(str, set(warmup) - set(tasks or weights or TASKS)))}"
        )
    if bool(hp.get("warmup_task_steps")) != bool(warmup):
        problems.append(
            "data.warmup_task_weights and data.warmup_task_steps go together: give both or neither"
        )
    image_size = hp.get("image_size", 768)
    if not _count(image_size) or image_size % 32:
        problems.append(
            f"data.image_size must be a positive multiple of 32 (DaViT's stride), got {image_size}"
        )
    for key in ("batch_size", "max_prompt_length", "max_target_length"):
        if not _count(hp.get(key, 1)):
            problems.append(f"data.{key} must be >= 1, got {hp.get(key)}")
    if hp.get("on_bad_sample", "skip") not in ("raise", "skip"):
        problems.append(f"data.on_bad_sample must be 'raise' or 'skip', got {hp.get('on_bad_sample')!r}")
    if not hp.get("synthetic_dir"):
        # The synthetic dataset (and its tokenizer) is written by prepare_data; real files must exist now.
        files = [hp.get("train_files") or [], hp.get("val_files") or []]
        for file in [f for group in files for f in (group if isinstance(group, list | tuple) else [group])]:
            if not _is(file, Path.is_file):
                problems.append(f"data: record file {file} does not exist")
        tokenizer = hp.get("tokenizer")
        if tokenizer and not _is(tokenizer, Path.is_dir):
            problems.append(f"data.tokenizer {tokenizer} is not a directory")
    return problems


def position_problems(config: Florence2Config, data_hp: Mapping[str, Any]) -> list[str]:
    """Image tokens + prompt share the encoder's position table; the target has the decoder's to itself."""
    image_size = data_hp.get("image_size", config.image_size)
    prompt, target = data_hp.get("max_prompt_length", 256), data_hp.get("max_target_length", 1024)
    if not (_count(image_size) and _count(prompt) and _count(target)) or image_size % 32:
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
        problems.append(f"max_target_length {target} > the decoder's {positions} positions")
    return problems


def _is(path: Any, check: Any) -> bool:
    # A config value that is not a usable path at all (a number, a name with a NUL byte) does not exist either.
    try:
        return bool(check(Path(path)))
    except (TypeError, ValueError, OSError):
        return False


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _positive(value: Any) -> bool:
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    )
