"""Crash-safe training checkpoints: atomic writes, verified reads, and resuming from the last good file.

A process killed while writing must never leave a file that looks like a checkpoint but is not one, and
a restart with the same command must find the newest checkpoint that actually loads. Lightning's own
`TorchCheckpointIO` writes through an fsspec transaction; `AtomicCheckpointIO` makes the contract explicit
for local files (temporary file in the same folder, fsync, `os.replace`, fsync of the folder) and turns any
unreadable file into a `CheckpointError` that names it.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from f2lightning.model.checkpoints import CheckpointError

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose local writes are all-or-nothing and whose reads fail with the file's name.

    Reads default to `torch.load(weights_only=True)`: a Lightning checkpoint of `Florence2LitModule` holds only
    tensors, numbers, strings and containers, so nothing in it needs pickle's arbitrary code execution.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None
    ) -> None:
        if "://" in str(path):  # remote filesystems: fsspec's transaction is the best available
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options for local files")
        atomic_torch_save(checkpoint, Path(path))

    def load_checkpoint(
        self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if not Path(path).is_file() and "://" not in str(path):
            raise CheckpointError(f"{path}: checkpoint file not found")
        try:
            return super().load_checkpoint(
                path,
                map_location=map_location or "cpu",
                weights_only=True if weights_only is None else weights_only,
            )
        except Exception as error:  # truncated zip, bad pickle, foreign file: all become one clear error
            raise CheckpointError(
                f"{path}: cannot be read as a checkpoint ({type(error).__name__}: {error})"
            ) from error


# `atomic_torch_save`'s temporary files: `.<checkpoint name>.<random>.tmp` beside the checkpoint.
_TEMPORARY_GLOB = ".*.ckpt.*.tmp"


def atomic_torch_save(obj: Any, path: Path) -> None:
    """`torch.save` to a temporary file beside `path`, flushed to disk, then renamed over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder as the target: `os.replace` is only atomic within one filesystem.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    # The rename itself lives in the folder's metadata; without this a power loss can undo it.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def verify_checkpoint(path: str | os.PathLike) -> int:
    """The `global_step` of a complete Lightning checkpoint; `CheckpointError` naming `path` otherwise."""
    try:
        # mmap reads the zip's central directory (at the end of the file) without loading every tensor.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:
        raise CheckpointError(
            f"{path}: cannot be read as a checkpoint ({type(error).__name__}: {error})"
        ) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "global_step" not in checkpoint:
        raise CheckpointError(f"{path}: not a Lightning training checkpoint (no state_dict / global_step)")
    return int(checkpoint["global_step"])


def remove_interrupted_writes(folders: Iterable[str | os.PathLike]) -> list[Path]:
    """Delete the temporary files that `atomic_torch_save` left behind when its process was killed mid-write.

    Called when a run starts, before any rank trains (a write in progress needs a training step first), so every
    such file belongs to a dead process. Returns the files removed (also logged).
    """
    stale = [p for folder in folders if Path(folder).is_dir() for p in Path(folder).rglob(_TEMPORARY_GLOB)]
    for path in stale:
        path.unlink(missing_ok=True)
        log.info("removed %s, left by a checkpoint write that was interrupted", path)
    return stale


def find_resume_checkpoint(folders: Iterable[str | os.PathLike]) -> Path | None:
    """The newest `*.ckpt` under `folders` (searched recursively) that verifies; None when there is none.

    Newest means highest `global_step`, then latest modification: `last.ckpt` and a `step=N.ckpt` of the same
    step are equivalent. A corrupt file is logged and passed over, so a run falls back to the previous good one.
    """
    candidates = {
        p.resolve() for folder in folders if Path(folder).is_dir() for p in Path(folder).rglob("*.ckpt")
    }
    ranked = []
    for path in candidates:
        try:
            step = verify_checkpoint(path)
        except CheckpointError as error:
            log.warning("skipping unusable checkpoint: %s", error)
            continue
        ranked.append((step, path.stat().st_mtime, path))
    return max(ranked)[2] if ranked else None


def resume_path(ckpt_path: str | os.PathLike | None, resume: str, trainer: pl.Trainer) -> str | None:
    """What `trainer.fit(ckpt_path=...)` should get so that re-running the same command resumes.

    `resume='auto'` with no `ckpt_path`, or `ckpt_path='last'`, picks the newest good checkpoint in the run's
    checkpoint folders (each `ModelCheckpoint.dirpath`, else the whole `default_root_dir`, so logger version
    folders do not hide the previous attempt's files); a first run finds none and starts fresh.
    """
    if ckpt_path not in (None, "last") or (ckpt_path is None and resume != "auto"):
        return None if ckpt_path is None else str(ckpt_path)
    folders = [
        cb.dirpath for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath
    ]
    remove_interrupted_writes(folders or [trainer.default_root_dir])
    found = find_resume_checkpoint(folders or [trainer.default_root_dir])
    if found is None:
        log.info(
            "no checkpoint to resume from in %s: starting from scratch", folders or trainer.default_root_dir
        )
        return None
    log.info("resuming from %s", found)
    return str(found)


def use_atomic_checkpoint_io(trainer: pl.Trainer) -> None:
    """Swap Lightning's default `TorchCheckpointIO` for `AtomicCheckpointIO`; a user-chosen plugin is kept."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
