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

`write_shards(..., by_image=True)` (`f2lightning shard --by-image`) writes one dataset under `DIR/by_image/`
instead, one item per image holding all its samples. That layout serves `tasks_per_image=k`: each item gives a
run of k samples of its image (tasks drawn by weight among the image's own), so a batch encodes each image once,
as the map-style sampler's runs do. An epoch is then every image once.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import random
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from litdata import CombinedStreamingDataset, StreamingDataLoader, StreamingDataset, optimize
from litdata.streaming.sampler import ChunkedIndex
from litdata.streaming.serializers import _SERIALIZERS, Serializer
from PIL import Image

from f2lightning.data.dataset import (
    Collator,
    DecodedImage,
    SampleItem,
    SizeMismatch,
    SkippedItem,
    fit_declared_size,
)
from f2lightning.data.expand import expand
from f2lightning.data.records import OnBadSample, read_records
from f2lightning.data.schema import BadRecordError
from f2lightning.data.skips import SkipReport
from f2lightning.images import BadImageError, load_image_bytes
from f2lightning.processor import Florence2Processor
from f2lightning.tasks import TASKS, get_task, task_tokens

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------- writing
BY_IMAGE_DIR = "by_image"


@dataclass(frozen=True)
class _ImageSamples:
    """Samples of one image (of one task, or of every task when sharding by image): the unit handed to an
    `optimize` worker (one file read)."""

    image_path: str
    image_size: tuple[int, int]
    samples: tuple[tuple[str, str, str], ...]  # (task, prompt, target)


def _image_fields(job: _ImageSamples) -> dict[str, Any]:
    # The name as bytes: litdata embeds (and decodes on reading) any string that names an existing image file.
    return {
        "image": Path(job.image_path).read_bytes(),
        "image_name": job.image_path.encode(),
        "image_size": job.image_size,
    }


def _sample_items(job: _ImageSamples) -> Iterator[dict[str, Any]]:
    """Per-task layout: one item per sample."""
    fields = _image_fields(job)
    for task, prompt, target in job.samples:
        yield {**fields, "prompt": prompt, "target": target, "task": task}


def _image_item(job: _ImageSamples) -> Iterator[dict[str, Any]]:
    """By-image layout: one item per image, its samples as JSON."""
    yield {**_image_fields(job), "samples": json.dumps(job.samples)}


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
    by_image: bool = False,
) -> dict[str, int]:
    """Write one litdata dataset per task under `out_dir/<task name>/`, or with `by_image` one dataset of
    images under `out_dir/by_image/` (for `tasks_per_image` > 1); returns the sample count per task.

    Bad records and unreadable images are raised (`on_bad_sample='raise'`) or counted in `report`
    (reasons `missing_image`, `bad_image`, and the record reasons of `read_records`).
    """
    report = report if report is not None else SkipReport()
    wanted = task_tokens(tasks) if tasks else None
    samples: dict[str, list[tuple[str, str, str]]] = defaultdict(list)  # image → its samples, every record's
    sizes: dict[str, tuple[int, int]] = {}
    for file in record_files:
        for record in read_records(file, on_bad_sample, check_images=True, report=report):
            problem = _image_problem(record.image)
            if problem is not None:
                error = BadRecordError(record.image, "bad_image", problem)
                if on_bad_sample == "raise":
                    raise error
                report.add(error)
                continue
            samples[record.image] += [(s.task, s.prompt, s.target) for s in expand(record, wanted)]
            sizes[record.image] = record.image_size
    if report.total:
        log.warning("shard: %s", report)
    counts = Counter(task for image_samples in samples.values() for task, _, _ in image_samples)
    root = out_dir.rstrip("/")
    if by_image:
        jobs = [_ImageSamples(image, sizes[image], tuple(found)) for image, found in samples.items() if found]
        _optimize(_image_item, jobs, f"{root}/{BY_IMAGE_DIR}", chunk_bytes, num_workers, overwrite)
    else:
        per_task: dict[str, dict[str, list[tuple[str, str, str]]]] = defaultdict(lambda: defaultdict(list))
        for image, found in samples.items():
            for sample in found:
                per_task[sample[0]][image].append(sample)
        for task in (t for t in TASKS if t in per_task):
            jobs = [
                _ImageSamples(image, sizes[image], tuple(found)) for image, found in per_task[task].items()
            ]
            _optimize(
                _sample_items, jobs, f"{root}/{get_task(task).name}", chunk_bytes, num_workers, overwrite
            )
    return {task: counts[task] for task in TASKS if task in counts}


def _optimize(
    fn, jobs: list[_ImageSamples], output_dir: str, chunk_bytes: str | int, num_workers: int, overwrite: bool
) -> None:
    # Workers only read files, so fork is safe; spawn would re-import torch in every worker of every task.
    start_method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    optimize(
        fn=fn,
        inputs=jobs,
        output_dir=output_dir,
        chunk_bytes=chunk_bytes,
        num_workers=num_workers,
        mode="overwrite" if overwrite else None,
        start_method=start_method,
        verbose=False,
    )


# ---------------------------------------------------------------------------------------- reading
class ShardError(ValueError):
    """Shards that cannot be read safely or at all; the message names the file or folder."""


# What `write_shards` stores: encoded image bytes, strings and integers. litdata would also read fields that a shard's
# index.json declares as `pickle` (or `graph`, which falls back to pickle) and run whatever code they carry, in a
# DataLoader worker; every format outside this set is refused when the shard is opened, before any item is read.
SAFE_FIELD_FORMATS = frozenset({"bytes", "str", "int", "float", "bool"})


class _RefusedFormat(Serializer):
    """Stands in for litdata's serializer of a format our shards never hold: opening a shard that declares it fails."""

    def __init__(self, name: str, input_dir: str) -> None:
        self.name, self.input_dir = name, input_dir

    def setup(self, metadata: Any) -> None:
        raise ShardError(
            f"{self.input_dir}: a field is declared as {metadata!r}; f2lightning reads only fields of the formats "
            f"{sorted(SAFE_FIELD_FORMATS)} (a {self.name!r} field can run code when it is read). Rewrite the shards "
            "with `f2lightning shard`."
        )

    def serialize(self, data: Any) -> tuple[bytes, str | None]:
        raise ShardError(f"{self.input_dir}: f2lightning does not write {self.name!r} fields")

    def deserialize(self, data: bytes) -> Any:
        raise ShardError(f"{self.input_dir}: f2lightning does not read {self.name!r} fields")

    def can_serialize(self, data: Any) -> bool:
        return False


def _check_local_shards(input_dir: str) -> None:
    """A local shard folder's index parses and lists chunk files of the sizes it declares: a truncated or missing
    chunk is found here, naming the file, instead of as a bare mmap / struct error deep in a worker."""
    index = Path(input_dir) / "index.json"
    try:
        chunks = json.loads(index.read_text())["chunks"]
        declared = {chunk["filename"]: int(chunk["chunk_bytes"]) for chunk in chunks}
    except FileNotFoundError:
        raise ShardError(f"{index}: no shard index; run `f2lightning shard`") from None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise ShardError(f"{index}: not a litdata shard index ({type(error).__name__}: {error})") from error
    for name, size in declared.items():
        chunk = Path(input_dir) / name
        actual = chunk.stat().st_size if chunk.is_file() else None
        if actual != size:
            found = "is missing" if actual is None else f"has {actual} bytes"
            raise ShardError(f"{chunk}: {found}; {index} declares {size} (a copy was cut short?)")


class _ImageShards(StreamingDataset):
    """Shards whose items carry an encoded image: shuffled, and decoded by the training processor."""

    def __init__(
        self,
        input_dir: str,
        processor: Florence2Processor,
        on_bad_sample: OnBadSample = "skip",
        seed: int = 0,
        size_mismatch: SizeMismatch = "skip",
    ) -> None:
        if "://" not in input_dir:
            _check_local_shards(input_dir)
        refused = {
            name: _RefusedFormat(name, input_dir) for name in _SERIALIZERS if name not in SAFE_FIELD_FORMATS
        }
        super().__init__(input_dir, shuffle=True, seed=seed, serializers=refused)
        self.processor = processor
        self.on_bad_sample = on_bad_sample
        self.size_mismatch = size_mismatch
        self.shard_dir = input_dir

    def _read(self, index: ChunkedIndex | int) -> dict[str, Any]:
        """litdata's item, or a `ShardError` naming the folder (and chunk) when its bytes do not decode."""
        try:
            return super().__getitem__(index)
        except ShardError:
            raise
        except Exception as error:  # litdata raises struct / value / mmap errors that name no file
            chunk = f", chunk {index.chunk_index}" if isinstance(index, ChunkedIndex) else ""
            raise ShardError(
                f"{self.shard_dir}{chunk}: item {getattr(index, 'index', index)} cannot be read "
                f"({type(error).__name__}: {error})"
            ) from error

    def _decode(self, item: dict[str, Any], position: int) -> DecodedImage | SkippedItem:
        """The image every sample of the item shares, as `MultitaskDataset` decodes it (`index` is the item's
        position in its shards), or the skipped item when the image cannot be used (raised with
        `on_bad_sample='raise'`)."""
        image_name = bytes(item["image_name"]).decode()
        try:
            image = load_image_bytes(item["image"], image_name)
            image_size, rewrite = fit_declared_size(
                image.size, item["image_size"], image_name, self.size_mismatch
            )
        except BadImageError as error:
            if self.on_bad_sample == "raise":
                raise
            return SkippedItem.of(error, position)
        return DecodedImage(position, image_name, self.processor.preprocess_image(image), image_size, rewrite)


class TaskStream(_ImageShards):
    """One task's shards, decoded into `SampleItem`s as `MultitaskDataset` gives them (bad images: a `SkippedItem`).

    `index` is the item's position in its task's shards (it is not an index into any map-style dataset).
    """

    def __getitem__(self, index: ChunkedIndex | int) -> SampleItem | SkippedItem:
        item = self._read(index)
        position = index.index if isinstance(index, ChunkedIndex) else index
        image = self._decode(item, position)
        if isinstance(image, SkippedItem):
            return image
        return SampleItem(image, item["task"], item["prompt"], item["target"])


class ImageRunStream(_ImageShards):
    """By-image shards: each item is a run of `tasks_per_image` samples of one image (a list of the `SampleItem`s
    `TaskStream` gives; a bad image gives its one skipped item).

    Each draw picks a task by `task_weights` among the tasks the image has (without weights: in proportion to
    its samples of each), then one of the image's samples of that task, repeating one only after all were used.
    The draws are seeded by (seed, epoch, position), so a resumed run and every rank see the same runs.
    An image with no sample of the tasks drawn gives an empty run (its batch is that much smaller).
    """

    def __init__(
        self,
        input_dir: str,
        processor: Florence2Processor,
        tasks_per_image: int,
        tasks: Sequence[str] | None = None,
        task_weights: Mapping[str, float] | None = None,
        on_bad_sample: OnBadSample = "skip",
        seed: int = 0,
        size_mismatch: SizeMismatch = "skip",
    ) -> None:
        """`tasks` and `task_weights` take task tokens; the tasks drawn are those in both (where given)."""
        super().__init__(input_dir, processor, on_bad_sample, seed, size_mismatch)
        self.tasks_per_image = tasks_per_image
        self.task_weights = dict(task_weights) if task_weights else None
        self.tasks = set(tasks or TASKS) & set(self.task_weights or TASKS)

    def __getitem__(self, index: ChunkedIndex | int) -> list[SampleItem | SkippedItem]:
        item = self._read(index)
        position = index.index if isinstance(index, ChunkedIndex) else index
        by_task: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for task, prompt, target in json.loads(item["samples"]):
            if task in self.tasks:
                by_task[task].append((prompt, target))
        if not by_task:
            return []
        image = self._decode(item, position)
        if isinstance(image, SkippedItem):
            return [image]
        tasks = list(by_task)
        weights = [self.task_weights[t] if self.task_weights else len(by_task[t]) for t in tasks]
        draw = random.Random(f"{self.seed}/{self.current_epoch}/{position}")
        unused: dict[str, list[tuple[str, str]]] = {}
        run = []
        for task in draw.choices(tasks, weights, k=self.tasks_per_image):
            if not unused.get(task):
                unused[task] = draw.sample(by_task[task], len(by_task[task]))
            prompt, target = unused[task].pop()
            run.append(SampleItem(image, task, prompt, target))
        return run


class _RunCollator(Collator):
    """Batches of runs: the runs' samples, in order, through the map-style `Collator`."""

    def __call__(self, runs: Sequence[list[SampleItem | SkippedItem]]) -> dict[str, Any]:
        return super().__call__([sample for run in runs for sample in run])


def task_dirs(streaming_dir: str, tasks: Sequence[str] | None = None) -> dict[str, str]:
    """`{task token: shard folder}` under `streaming_dir`, in the task registry's order.

    Named `tasks` need no listing, so `streaming_dir` may be an object-store URL; otherwise the local folder
    is searched for the task folders `write_shards` made.
    """
    root = streaming_dir.rstrip("/")
    if tasks:
        wanted = set(task_tokens(tasks))
        dirs = {t: f"{root}/{TASKS[t].name}" for t in TASKS if t in wanted}
        missing = [d for d in dirs.values() if "://" not in d and not (Path(d) / "index.json").is_file()]
        if missing:
            raise FileNotFoundError(f"no shards in {missing}; run `f2lightning shard`")
        return dirs
    found = {
        get_task(d.name).token: str(d)
        for d in Path(root).iterdir()
        if (d / "index.json").is_file() and d.name != BY_IMAGE_DIR
    }
    if not found:
        by_image = (Path(root) / BY_IMAGE_DIR / "index.json").is_file()
        raise FileNotFoundError(
            f"no task shards (<task>/index.json) under {streaming_dir}; run `f2lightning shard`"
            + (
                " (the shards there were written --by-image: they serve data.tasks_per_image > 1)"
                if by_image
                else ""
            )
        )
    return {t: found[t] for t in TASKS if t in found}


def build_stream(
    streaming_dir: str,
    processor: Florence2Processor,
    tasks: Sequence[str] | None = None,
    task_weights: Mapping[str, float] | None = None,
    seed: int = 0,
    on_bad_sample: OnBadSample = "skip",
    tasks_per_image: int = 1,
    size_mismatch: SizeMismatch = "skip",
) -> CombinedStreamingDataset | ImageRunStream:
    """The task streams under `streaming_dir` (all, or `tasks`, or the weighted ones) mixed into one.

    Without `task_weights` an epoch is every sample once (tasks drawn in proportion to their sizes). With
    them, each sample's task is drawn by weight and the epoch ends when the first task runs out (litdata's
    rule for weighted mixing); every rank draws the same task sequence, so all ranks stop on the same step.
    `tasks_per_image` > 1 reads the by-image shards instead (`ImageRunStream`; an epoch is every image once).
    """
    weights = {get_task(t).token: float(w) for t, w in (task_weights or {}).items()}
    bad = {t: w for t, w in weights.items() if not w > 0}
    if bad:
        raise ValueError(f"task weights must be positive, got {bad}")
    if tasks_per_image > 1:
        images = f"{streaming_dir.rstrip('/')}/{BY_IMAGE_DIR}"
        if "://" not in images and not (Path(images) / "index.json").is_file():
            raise FileNotFoundError(
                f"tasks_per_image={tasks_per_image} reads shards written by image, and {images} has none; "
                "run `f2lightning shard --by-image`"
            )
        wanted = task_tokens(tasks) if tasks else None
        return ImageRunStream(
            images, processor, tasks_per_image, wanted, weights, on_bad_sample, seed, size_mismatch
        )
    dirs = task_dirs(streaming_dir, tasks or list(weights) or None)
    if weights:  # as in MixedTaskSampler: a task without a weight is not drawn
        dirs = {t: d for t, d in dirs.items() if t in weights}
    streams = [TaskStream(d, processor, on_bad_sample, seed, size_mismatch) for d in dirs.values()]
    if not weights:
        return CombinedStreamingDataset(streams, seed=seed)
    return CombinedStreamingDataset(
        streams, seed=seed, weights=[weights[t] for t in dirs], iterate_over_all=False
    )


def streaming_loader(
    dataset: CombinedStreamingDataset | ImageRunStream,
    processor: Florence2Processor,
    batch_size: int,
    num_workers: int,
) -> StreamingDataLoader:
    """Batches of `batch_size` samples, tokenized and padded by the same `Collator` as the map-style path
    (from an `ImageRunStream`: `batch_size / tasks_per_image` runs)."""
    runs = isinstance(dataset, ImageRunStream)
    return StreamingDataLoader(
        dataset,
        batch_size=batch_size // dataset.tasks_per_image if runs else batch_size,
        num_workers=num_workers,
        collate_fn=(_RunCollator if runs else Collator)(processor),
        pin_memory=torch.cuda.is_available(),
    )


__all__ = [
    "ImageRunStream",
    "ShardError",
    "TaskStream",
    "build_stream",
    "streaming_loader",
    "task_dirs",
    "write_shards",
]
