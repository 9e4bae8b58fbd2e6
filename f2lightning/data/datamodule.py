"""`Florence2DataModule`: record files → mixed-task training stream and per-task validation batches.

Everything that can be wrong with the data is found in `setup`, before the first step: unknown tasks,
bad records (raised or counted per `on_bad_sample`), missing tokenizer. Images that fail to decode later,
in a worker, are skipped and counted by the collator (or raised, naming the file) — never silently lost.
"""

from __future__ import annotations

import json
import logging
import random
import warnings
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.fabric.utilities.warnings import PossibleUserWarning
from torch.utils.data import ConcatDataset, DataLoader, Subset

from f2lightning.checks import is_count, is_path, is_positive, raise_problems
from f2lightning.data.dataset import Collator, MultitaskDataset, SizeMismatch
from f2lightning.data.expand import Sample, expand
from f2lightning.data.records import read_records
from f2lightning.data.sampler import MixedTaskSampler, ResumableBatchSampler
from f2lightning.data.skips import SkipReport
from f2lightning.model.config import IMAGENET_MEAN, IMAGENET_STD
from f2lightning.processor import Florence2Processor
from f2lightning.tasks import TASKS, UnknownTaskError, task_tokens
from f2lightning.tasks.locations import ADDED_TOKEN_PATTERN

log = logging.getLogger(__name__)


class Florence2DataModule(L.LightningDataModule):
    def __init__(
        self,
        train_files: list[str] | None = None,
        val_files: list[str] | None = None,
        test_files: list[str] | None = None,
        tokenizer: str | None = None,
        synthetic_dir: str | None = None,
        synthetic_images: int = 2000,
        tokenizer_vocab_size: int = 2048,
        image_size: int = 768,
        tasks: list[str] | None = None,
        task_weights: dict[str, float] | None = None,
        epoch_length: int | None = None,
        warmup_task_weights: dict[str, float] | None = None,
        warmup_task_steps: int = 0,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        val_samples_per_task: int | None = 32,
        num_workers: int = 2,
        seed: int = 0,
        on_bad_sample: Literal["raise", "skip"] = "skip",
        size_mismatch: SizeMismatch = "skip",
        max_prompt_length: int = 256,
        max_target_length: int = 1024,
        image_mean: tuple[float, float, float] = IMAGENET_MEAN,
        image_std: tuple[float, float, float] = IMAGENET_STD,
        bucket_batches: int = 0,
        tasks_per_image: int = 1,
        max_images: int | None = None,
        streaming_dir: str | None = None,
        predict_files: list[str] | None = None,
        predict_tasks: list[str] | None = None,
        predict_text: str | None = None,
    ) -> None:
        """
        Args:
            train_files / val_files: record JSONL files (see `f2lightning.data.schema`).
            test_files: record files for `test` (all their samples, scored like validation); default the
                validation files.
            tokenizer: a tokenizer directory; default `<synthetic_dir>/tokenizer`, trained on the training
                texts by `prepare_data` when missing.
            synthetic_dir: use (and create in `prepare_data` if missing) the synthetic multitask dataset there
                with `synthetic_images` images; fills in `train_files` / `val_files`.
            tasks: tasks (tokens or names of registered tasks) to train on (default: every task the records
                support).
            task_weights: relative sampling weight per task (default: proportional to sample counts).
            epoch_length: samples per epoch over all ranks (default: all samples once).
            warmup_task_weights / warmup_task_steps: sampling weights for the first `warmup_task_steps` batches
                of training (per rank), e.g. `{"<CAPTION>": 1}`: a model trained from scratch on several tasks at
                once learns to tell the prompts apart and ignores the image; a short caption-only start makes it
                read the image first (see docs/training.md "Training from scratch"). Tasks left out get weight 0.
            val_samples_per_task: cap on validation samples per task (generation is slow).
            image_mean / image_std: pixel normalisation; must be the model's (`Florence2Config.image_mean` /
                `image_std`, ImageNet's for Florence-2), which the start-up check compares.
            on_bad_sample: `raise` stops at the first bad record / image naming it; `skip` counts and reports.
            size_mismatch: an image file whose size differs from its record's `width` / `height` is a bad sample
                (`skip`, reason `size_mismatch`), or (`rescale`) trusted as a resized copy of the annotated image:
                the locations keep their relative places and each such sample is counted as rewritten.
            bucket_batches: >1 sorts each window of that many batches by target length (less padding).
            tasks_per_image: >1 draws runs of this many samples that ask about the same image where the records
                allow (task mix unchanged); the batch encodes each image once, so the image encoder's share of
                a step shrinks by up to this factor. `batch_size` must be a multiple of it.
            max_images: train on a seeded random subset of this many training images (Table 11 data scaling).
            streaming_dir: train from the per-task litdata shards `f2lightning shard` wrote there (a folder, or
                an object-store URL when `tasks` / `task_weights` name the tasks) instead of `train_files`;
                with `tasks_per_image` > 1, from the shards `f2lightning shard --by-image` wrote there.
                `epoch_length`, `bucket_batches` and `max_images` do not apply (see `f2lightning.data.streaming`).
            predict_files / predict_tasks / predict_text: what `predict` answers: image files, folders, glob
                patterns or record JSONL files, each put to every task of `predict_tasks` (tokens or names;
                default `<OD>`), with `predict_text` as the input of the tasks that take one (as `f2lightning
                predict` does; docs/inference.md).
        """
        super().__init__()
        self.save_hyperparameters()
        raise_problems(data_problems(self.hparams, files=False), "data configuration")
        if synthetic_dir is not None:
            train_files = train_files or [str(Path(synthetic_dir) / "train.jsonl")]
            val_files = val_files or [str(Path(synthetic_dir) / "val.jsonl")]
            tokenizer = tokenizer or str(Path(synthetic_dir) / "tokenizer")
        # Tasks as tokens from here on (the registry refuses unknown ones, naming the known tasks).
        self.tasks = task_tokens(tasks) if tasks else None
        self.task_weights = _by_token(task_weights)
        self.warmup_task_weights = _by_token(warmup_task_weights)
        self.train_files, self.val_files = list(train_files or []), list(val_files or [])
        self.test_files = list(test_files or self.val_files)
        self.tokenizer_path = Path(tokenizer)
        self.tokenizer = None
        self.skip_report = SkipReport()
        self.train_dataset: MultitaskDataset | None = None
        self.val_dataset: MultitaskDataset | None = None
        self.test_dataset: MultitaskDataset | None = None
        self.predict_requests: list | None = None
        self._resume: dict | None = None
        self._train_batches: ResumableBatchSampler | None = None

    # ------------------------------------------------------------------ preparation (rank 0 only)
    def prepare_data(self) -> None:
        synthetic_dir = self.hparams.synthetic_dir
        if synthetic_dir is not None and not (Path(synthetic_dir) / "train.jsonl").exists():
            from f2lightning.data.synthetic import make_synthetic

            log.info("writing %d synthetic images to %s", self.hparams.synthetic_images, synthetic_dir)
            make_synthetic(synthetic_dir, self.hparams.synthetic_images, seed=self.hparams.seed)
        if not self.tokenizer_path.exists():
            if synthetic_dir is None:
                raise FileNotFoundError(f"tokenizer directory {self.tokenizer_path} does not exist")
            train_tokenizer_on_records(
                self.train_files, self.tokenizer_path, self.hparams.tokenizer_vocab_size
            )

    # ------------------------------------------------------------------ setup (every rank)
    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            from f2lightning.tokenizer import load_tokenizer

            self.tokenizer = load_tokenizer(self.tokenizer_path)
        self.processor = Florence2Processor(
            self.tokenizer,
            image_size=self.hparams.image_size,
            image_mean=self.hparams.image_mean,
            image_std=self.hparams.image_std,
            max_prompt_length=self.hparams.max_prompt_length,
            max_target_length=self.hparams.max_target_length,
        )
        on_bad = self.hparams.on_bad_sample
        if stage in (None, "fit") and self.train_dataset is None and self.hparams.streaming_dir is None:
            samples = self._samples(self.train_files, self.hparams.max_images)
            self.train_dataset = MultitaskDataset(samples, self.processor, on_bad, self.hparams.size_mismatch)
            log.info("training samples per task: %s", self.train_dataset.task_sizes)
        if stage in (None, "fit", "validate") and self.val_dataset is None and self.val_files:
            samples = self._samples(self.val_files)
            cap = self.hparams.val_samples_per_task
            self.val_dataset = MultitaskDataset(
                {t: s[:cap] for t, s in samples.items()}, self.processor, on_bad, self.hparams.size_mismatch
            )
        if stage in (None, "test") and self.test_dataset is None and self.test_files:
            samples = self._samples(self.test_files)
            self.test_dataset = MultitaskDataset(samples, self.processor, on_bad, self.hparams.size_mismatch)
            log.info(
                "test samples per task: %s (%s)", self.test_dataset.task_sizes, ", ".join(self.test_files)
            )
        if stage == "predict" and self.predict_requests is None:
            from f2lightning.inference.predict import build_requests, collect_images

            images = collect_images(self.hparams.predict_files or [], self.skip_report)
            tasks = self.hparams.predict_tasks or ["<OD>"]
            self.predict_requests = build_requests(images, tasks, self.hparams.predict_text)
        if self.skip_report.total:
            log.warning("records: %s", self.skip_report)
            if self.trainer is not None and self.trainer.log_dir:
                Path(self.trainer.log_dir).mkdir(parents=True, exist_ok=True)
                self.skip_report.write(Path(self.trainer.log_dir) / "skipped_records.json")

    def _samples(self, files: list[str], max_images: int | None = None) -> dict[str, list[Sample]]:
        tasks = self.tasks or (list(self.task_weights) if self.task_weights else None)
        records = [
            record
            for file in files
            for record in read_records(
                file, self.hparams.on_bad_sample, check_images=True, report=self.skip_report
            )
        ]
        if max_images is not None and max_images < len(records):
            keep = sorted(random.Random(self.hparams.seed).sample(range(len(records)), max_images))
            records = [records[i] for i in keep]
        by_task: dict[str, list[Sample]] = defaultdict(list)
        for record in records:
            for sample in expand(record, tasks):
                by_task[sample.task].append(sample)
        missing = sorted(set(self.task_weights or {}) - set(by_task))
        if missing:
            raise ValueError(f"task_weights name tasks with no samples in {files}: {missing}")
        # A fixed task order (the registry's) keeps dataset indices identical on every rank and every run.
        return {task: by_task[task] for task in TASKS if task in by_task}

    # ------------------------------------------------------------------ loaders
    def _rank(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        if hp.streaming_dir is not None:  # litdata splits the stream across ranks and workers itself
            from f2lightning.data.streaming import build_stream, streaming_loader

            stream = build_stream(
                hp.streaming_dir,
                self.processor,
                self.tasks,
                self.task_weights,
                hp.seed,
                hp.on_bad_sample,
                hp.tasks_per_image,
                hp.size_mismatch,
            )
            return streaming_loader(stream, self.processor, hp.batch_size, hp.num_workers)
        rank, world_size = self._rank()
        dataset = self.train_dataset
        sampler = MixedTaskSampler(
            dataset.task_sizes,
            self.task_weights,
            hp.epoch_length,
            hp.seed,
            rank,
            world_size,
            warmup_weights=self.warmup_task_weights,
            warmup_length=hp.warmup_task_steps * hp.batch_size * world_size,
            tasks_per_image=hp.tasks_per_image,
            image_keys=[sample.image_path for sample in dataset.flat],
        )
        lengths = [len(sample.target) for sample in dataset.flat] if hp.bucket_batches > 1 else None
        self._train_batches = ResumableBatchSampler(sampler, hp.batch_size, lengths, hp.bucket_batches)
        if self._resume is not None:
            self._train_batches.resume(**self._resume)
            self._resume = None
        return self._loader(dataset, self._train_batches)

    def val_dataloader(self) -> DataLoader | list:
        return self._evaluation_loader(self.val_dataset)

    def test_dataloader(self) -> DataLoader | list:
        return self._evaluation_loader(self.test_dataset)

    def predict_dataloader(self) -> DataLoader:
        """Single-task batches of the predict requests, grouped as `f2lightning predict` groups them; each rank
        answers every `world_size`-th batch. Undecodable images leave their batch and are counted by the writer."""
        from f2lightning.inference.generation import PromptBatches

        by_task: dict[str, list] = {}
        for request in self.predict_requests:
            by_task.setdefault(request.task, []).append(request)
        size = self.hparams.val_batch_size or self.hparams.batch_size
        batches = ConcatDataset(
            [
                PromptBatches(task, requests, self.processor, size, skip_bad_images=True)
                for task, requests in by_task.items()
            ]
        )
        rank, world_size = self._rank()
        workers = self.hparams.num_workers
        return DataLoader(
            Subset(batches, range(rank, len(batches), world_size)),
            batch_size=None,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
        )

    def _evaluation_loader(self, dataset: MultitaskDataset | None) -> DataLoader | list:
        if dataset is None:
            return []
        rank, world_size = self._rank()
        size = self.hparams.val_batch_size or self.hparams.batch_size
        # Single-task batches: generation settings (output length, n-gram blocking) are per task.
        batches, start = [], 0
        for count in dataset.task_sizes.values():
            batches += [
                list(range(i, min(i + size, start + count))) for i in range(start, start + count, size)
            ]
            start += count
        return self._loader(dataset, batches[rank::world_size])

    def _loader(self, dataset: MultitaskDataset, batch_sampler) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(
            dataset,
            batch_sampler=batch_sampler,
            collate_fn=Collator(self.processor),
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    # ------------------------------------------------------------------ exact resume
    def state_dict(self) -> dict:
        """Where the training stream stands: saved in every checkpoint by Lightning.

        A streaming loader's position is not kept here: Lightning's fit loop saves and restores it itself, as
        for any loader with `state_dict` (restoring it here too would advance litdata's worker cursor twice).
        """
        if self.trainer is None:
            return {}
        loop = self.trainer.fit_loop.epoch_loop
        return {"epoch": self.trainer.current_epoch, "batches_done": loop.batch_progress.current.processed}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self._resume = {"epoch": state["epoch"], "batches_done": state["batches_done"]}
            # Lightning warns "your dataloader is not resumable" for any mid-epoch resume of a loader without its own
            # `state_dict`; this loader resumes exactly through the state above, so the warning would only mislead.
            warnings.filterwarnings(
                "ignore", message=".*your dataloader is not resumable", category=PossibleUserWarning
            )


def data_problems(hp: Mapping[str, Any], files: bool = True) -> list[str]:
    """Every rule on the data's own settings (`Florence2DataModule`'s arguments, raw as a config gives them);
    `files`: also that the record files and tokenizer are on disk (a fit needs them, building does not)."""
    tasks, weights = hp.get("tasks") or [], hp.get("task_weights") or {}
    if not isinstance(tasks, list | tuple) or not isinstance(weights, Mapping):
        return [
            f"data.tasks must be a list of task tokens and data.task_weights a mapping, got {tasks!r} / {weights!r}"
        ]
    problems, warmup = [], hp.get("warmup_task_weights") or {}
    try:
        task_tokens([*tasks, *weights, *(warmup if isinstance(warmup, Mapping) else {})])
    except UnknownTaskError as error:
        problems.append(f"data: {error}")
    else:  # names and tokens of one task are the same task
        tasks, weights = task_tokens(tasks), _by_token(weights)
        warmup = _by_token(warmup) if isinstance(warmup, Mapping) else warmup
    bad_weights = {task: w for task, w in weights.items() if not is_positive(w)}
    if bad_weights:
        problems.append(f"data.task_weights must be positive finite numbers, got {bad_weights}")
    if tasks and weights and set(weights) - set(tasks):
        problems.append(
            f"data.task_weights name tasks not in data.tasks: {sorted(map(str, set(weights) - set(tasks)))}"
        )
    if (
        not isinstance(warmup, Mapping)
        or not all(is_positive(w) or w == 0 for w in warmup.values())
        or (warmup and not any(is_positive(w) for w in warmup.values()))
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
    if not (hp.get("train_files") or hp.get("synthetic_dir") or hp.get("streaming_dir")):
        problems.append("data: give train_files (record JSONL), synthetic_dir or streaming_dir")
    if not (hp.get("tokenizer") or hp.get("synthetic_dir")):
        problems.append("data: give a tokenizer directory (e.g. a local copy of facebook/bart-base)")
    if hp.get("warmup_task_steps") and hp.get("streaming_dir"):
        problems.append("data.warmup_task_steps applies to record files, not to streaming_dir")
    batch_size, per_image = hp.get("batch_size", 8), hp.get("tasks_per_image", 1)
    if is_count(batch_size) and not (is_count(per_image) and batch_size % per_image == 0):
        problems.append(
            f"data.batch_size {batch_size} must be a positive multiple of tasks_per_image {per_image}"
        )
    image_size = hp.get("image_size", 768)
    if not is_count(image_size) or image_size % 32:
        problems.append(
            f"data.image_size must be a positive multiple of 32 (DaViT's stride), got {image_size}"
        )
    for key in ("batch_size", "max_prompt_length", "max_target_length"):
        if not is_count(hp.get(key, 1)):
            problems.append(f"data.{key} must be >= 1, got {hp.get(key)}")
    try:
        needing_input = [t for t in task_tokens(hp.get("predict_tasks") or []) if TASKS[t].takes_input]
    except UnknownTaskError as error:
        problems.append(f"data.predict_tasks: {error}")
    else:
        if needing_input and not hp.get("predict_text"):
            problems.append(f"data.predict_tasks {needing_input} take a text input: set data.predict_text")
    if hp.get("on_bad_sample", "skip") not in ("raise", "skip"):
        problems.append(f"data.on_bad_sample must be 'raise' or 'skip', got {hp.get('on_bad_sample')!r}")
    if files and not hp.get("synthetic_dir"):
        # The synthetic dataset (and its tokenizer) is written by prepare_data; real files must exist now.
        files = [hp.get("train_files") or [], hp.get("val_files") or [], hp.get("test_files") or []]
        for file in [f for group in files for f in (group if isinstance(group, list | tuple) else [group])]:
            if not is_path(file, Path.is_file):
                problems.append(f"data: record file {file} does not exist")
        tokenizer = hp.get("tokenizer")
        if tokenizer and not is_path(tokenizer, Path.is_dir):
            problems.append(f"data.tokenizer {tokenizer} is not a directory")
    return problems


def _by_token(weights: dict[str, float] | None) -> dict[str, float] | None:
    return dict(zip(task_tokens(weights), weights.values(), strict=True)) if weights else weights


def train_tokenizer_on_records(files: list[str], out_dir: Path, vocab_size: int) -> Path:
    """Train the offline byte-level BPE on every prompt and target the records produce."""
    from f2lightning.tokenizer import train_tokenizer

    texts = []
    for file in files:
        for record in read_records(file, "skip"):
            for sample in expand(record):
                # Location and structure tokens are added whole; BPE merges spent on them would be wasted.
                texts += [
                    ADDED_TOKEN_PATTERN.sub(" ", sample.prompt),
                    ADDED_TOKEN_PATTERN.sub(" ", sample.target),
                ]
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
    tokenizer.save_pretrained(out_dir)
    (Path(out_dir) / "f2lightning_tokenizer.json").write_text(
        json.dumps({"trained_on": files, "vocab_size": vocab_size})
    )
    log.info("trained a %d-token tokenizer on %d texts -> %s", len(tokenizer), len(texts), out_dir)
    return Path(out_dir)


__all__ = ["Florence2DataModule", "data_problems", "train_tokenizer_on_records"]
