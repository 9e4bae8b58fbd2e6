"""Streaming training data for corpora that do not fit one disk: litdata shards, one stream per task.

`write_shards` (the `f2lightning shard` command) expands record files into samples and writes one litdata
optimized dataset per task under `DIR/<task name>/` (`DIR` may be a local folder or an `s3://`-style URL).
Each item holds the *encoded* image file bytes, so shards are as small as the source images, plus the
prompt, target, task token and the `(width, height)` that the locations refer to.

`streaming_loader` mixes the task streams by weight (`CombinedStreamingDataset`) and batches them with the
map-style path's `Collator`, so a training step cannot tell the two paths apart. litdata deals disjoint
chunks to every rank and worker, reshuffles them each epoch and saves its exact position in
`StreamingDataLoader.state_dict`, which Lightning's fit loop stores in every checkpoint (see
`Florence2DataModule.state_dict`). Why litdata and not webdataset: CONTRIBUTING.md, "Streaming data".
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from litdata import CombinedStreamingDataset, StreamingDataLoader, StreamingDataset, optimize
from litdata.streaming.sampler import ChunkedIndex
from PIL import Image

from f2lightning.data.dataset import Collator
from f2lightning.data.expand import ALL_TASKS, expand
from f2lightning.data.records import OnBadSample, SkipReport, read_records
from f2lightning.data.schema import BadRecordError
from f2lightning.images import BadImageError, load_image_bytes
from f2lightning.processor import Florence2Processor
from f2lightning.tasks import get_task

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------- writing
@dataclass(frozen=True)
class _ImageSamples:
    """One image's samples of one task: the unit handed to an `optimize` worker (one file read)."""

    image_path: str
    image_size: tuple[int, int]
    task: str
    pairs: tuple[tuple[str, str], ...]  # (prompt, target)


def _shard_items(job: _ImageSamples) -> Iterator[dict[str, Any]]:
    data = Path(job.image_path).read_bytes()
    # As bytes: litdata embeds (and decodes on reading) any string that names an existing image file.
    name = job.image_path.encode()
    for prompt, target in job.pairs:
        yield {
            "image": data,
            "image_name": name,
            "prompt": prompt,
            "target": target,
            "task": job.task,
            "image_size": job.image_size,
        }


def _image_problem(path: str) -> str | None:
    """Why the image cannot be used, from its header only: decoding every image of a corpus here would
    cost as much as an epoch. Files that pass but fail to decode are skipped (and counted) in training."""
    try:
        with Image.open(path) as image:
            image.size  # noqa: B018 - reading the header is the check
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        return f"image {path} cannot be read ({error})"
    return None


def write_shards(
    record_files: Sequence[str | os.PathLike],
    out_dir: str,
    tasks: Sequence[str] | None = None,
    chunk_bytes: str | int = "64MB",
    num_workers: int = 1,
    on_bad_sample: OnBadSample = "skip",
    report: SkipReport | None = None,
    overwrite: bool = False,
) -> dict[str, int]:
    """Write one litdata dataset per task under `out_dir/<task name>/`; returns the sample count per task.

    Bad records and unreadable images are raised (`on_bad_sample='raise'`) or counted in `report`
    (reasons `missing_image`, `bad_image`, and the record reasons of `read_records`).
    """
    report = report if report is not None else SkipReport()
    wanted = [get_task(t).token for t in tasks] if tasks else None
    jobs: dict[str, list[_ImageSamples]] = defaultdict(list)
    for file in record_files:
        for record in read_records(file, on_bad_sample, check_images=True, report=report):
            problem = _image_problem(record.image)
            if problem is not None:
                error = BadRecordError(record.image, "bad_image", problem)
                if on_bad_sample == "raise":
                    raise error
                report.add(error)
                continue
            by_task: dict[str, list[tuple[str, str]]] = defaultdict(list)
            for sample in expand(record, wanted):
                by_task[sample.task].append((sample.prompt, sample.target))
            for task, pairs in by_task.items():
                jobs[task].append(_ImageSamples(record.image, record.image_size, task, tuple(pairs)))
    if report.total:
        log.warning("shard: %s", report)
    # Workers only read files, so fork is safe; spawn would re-import torch in every worker of every task.
    start_method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    counts = {}
    for task in (t for t in ALL_TASKS if t in jobs):
        optimize(
            fn=_shard_items,
            inputs=jobs[task],
            output_dir=f"{out_dir.rstrip('/')}/{get_task(task).name}",
            chunk_bytes=chunk_bytes,
            num_workers=num_workers,
            mode="overwrite" if overwrite else None,
            start_method=start_method,
            verbose=False,
        )
        counts[task] = sum(len(job.pairs) for job in jobs[task])
    return counts


# ---------------------------------------------------------------------------------------- reading
class TaskStream(StreamingDataset):
    """One task's shards, decoded into the dict `MultitaskDataset` returns (bad images: `{'skipped': why}`).

    `index` is the item's position in its task's shards (it is not an index into any map-style dataset).
    """

    def __init__(
        self,
        input_dir: str,
        processor: Florence2Processor,
        on_bad_sample: OnBadSample = "skip",
        seed: int = 0,
    ) -> None:
        super().__init__(input_dir, shuffle=True, seed=seed)
        self.processor = processor
        self.on_bad_sample = on_bad_sample

    def __getitem__(self, index: ChunkedIndex | int) -> dict[str, Any]:
        item = super().__getitem__(index)
        position = index.index if isinstance(index, ChunkedIndex) else index
        image_name = bytes(item["image_name"]).decode()
        try:
            image = load_image_bytes(item["image"], image_name)
        except BadImageError as error:
            if self.on_bad_sample == "raise":
                raise
            return {"skipped": str(error), "index": position}
        return {
            "index": position,
            "image_key": image_name,
            "pixel_values": self.processor.preprocess_image(image),
            "prompt": item["prompt"],
            "target": item["target"],
            "task": item["task"],
            "image_size": tuple(item["image_size"]),
        }


def task_dirs(streaming_dir: str, tasks: Sequence[str] | None = None) -> dict[str, str]:
    """`{task token: shard folder}` under `streaming_dir`, in `ALL_TASKS` order.

    Named `tasks` need no listing, so `streaming_dir` may be an object-store URL; otherwise the local folder
    is searched for the task folders `write_shards` made.
    """
    root = streaming_dir.rstrip("/")
    if tasks:
        wanted = {get_task(t).token for t in tasks}
        dirs = {t: f"{root}/{get_task(t).name}" for t in ALL_TASKS if t in wanted}
        missing = [d for d in dirs.values() if "://" not in d and not (Path(d) / "index.json").is_file()]
        if missing:
            raise FileNotFoundError(f"no shards in {missing}; run `f2lightning shard`")
        return dirs
    found = {get_task(d.name).token: str(d) for d in Path(root).iterdir() if (d / "index.json").is_file()}
    if not found:
        raise FileNotFoundError(
            f"no task shards (<task>/index.json) under {streaming_dir}; run `f2lightning shard`"
        )
    return {t: found[t] for t in ALL_TASKS if t in found}


def build_stream(
    streaming_dir: str,
    processor: Florence2Processor,
    tasks: Sequence[str] | None = None,
    task_weights: Mapping[str, float] | None = None,
    seed: int = 0,
    on_bad_sample: OnBadSample = "skip",
) -> CombinedStreamingDataset:
    """The task streams under `streaming_dir` (all, or `tasks`, or the weighted ones) mixed into one.

    Without `task_weights` an epoch is every sample once (tasks drawn in proportion to their sizes). With
    them, each sample's task is drawn by weight and the epoch ends when the first task runs out (litdata's
    rule for weighted mixing); every rank draws the same task sequence, so all ranks stop on the same step.
    """
    weights = {get_task(t).token: float(w) for t, w in (task_weights or {}).items()}
    bad = {t: w for t, w in weights.items() if not w > 0}
    if bad:
        raise ValueError(f"task weights must be positive, got {bad}")
    dirs = task_dirs(streaming_dir, tasks or list(weights) or None)
    if weights:  # as in MixedTaskSampler: a task without a weight is not drawn
        dirs = {t: d for t, d in dirs.items() if t in weights}
    streams = [TaskStream(d, processor, on_bad_sample, seed) for d in dirs.values()]
    if not weights:
        return CombinedStreamingDataset(streams, seed=seed)
    return CombinedStreamingDataset(
        streams, seed=seed, weights=[weights[t] for t in dirs], iterate_over_all=False
    )


def streaming_loader(
    dataset: CombinedStreamingDataset, processor: Florence2Processor, batch_size: int, num_workers: int
) -> StreamingDataLoader:
    """Batches of the mixed stream, tokenized and padded by the same `Collator` as the map-style path."""
    return StreamingDataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=Collator(processor),
        pin_memory=torch.cuda.is_available(),
    )


__all__ = ["TaskStream", "build_stream", "streaming_loader", "task_dirs", "write_shards"]
