"""Mixed-task sampling with controlled ratios, disjoint per-rank streams and an exact resume position.

Each epoch draws `epoch_length` (task, index) pairs from a generator seeded by (seed, epoch): the task by its
weight, the index by walking a fresh permutation of that task's samples (so a task's samples repeat only
after all of them were used). An optional warm-up draws the first `warmup_length` samples of training by other
weights (e.g. captions only, so that a model trained from scratch learns to read the image before it must also
tell tasks apart). With `tasks_per_image=k`, each run of k draws asks about one image where it can: the
first draw picks a sample as above, the next k-1 keep their drawn task but take a sample of the same image when
the image has one (an FLD-5B-style record has many), so the image encoder runs once for all of them. The
global stream is dealt round-robin to ranks in these runs, so ranks never share a sample and together they
cover the stream once. `ResumableBatchSampler` groups the stream into batches (optionally bucketed by length,
keeping runs together) and can skip the batches an interrupted epoch already trained on.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterator, Mapping, Sequence

import torch
from torch.utils.data import Sampler


class MixedTaskSampler(Sampler[int]):
    """Yields indices into the concatenation of per-task sample lists (in `task_sizes` order)."""

    def __init__(
        self,
        task_sizes: Mapping[str, int],
        weights: Mapping[str, float] | None = None,
        epoch_length: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        warmup_weights: Mapping[str, float] | None = None,
        warmup_length: int = 0,
        tasks_per_image: int = 1,
        image_keys: Sequence[Hashable] | None = None,
    ) -> None:
        """`image_keys[i]` names the image of dataset index `i`; needed when `tasks_per_image > 1`."""
        self.tasks = [task for task, size in task_sizes.items() if size > 0]
        if not self.tasks:
            raise ValueError("no task has any sample")
        weights = dict(weights) if weights else {task: float(task_sizes[task]) for task in self.tasks}
        unknown = sorted(set(weights) - set(task_sizes))
        if unknown:
            raise ValueError(f"weights name tasks without samples: {unknown}")
        bad = {task: w for task, w in weights.items() if not w > 0}
        if bad:
            raise ValueError(f"task weights must be positive, got {bad}")
        self.tasks = [task for task in self.tasks if task in weights]
        self.sizes = [task_sizes[task] for task in self.tasks]
        offsets, total = [], 0
        for task in task_sizes:
            if task in self.tasks:
                offsets.append(total)
            total += task_sizes[task]
        self.offsets = offsets
        self.weights = torch.tensor([weights[task] for task in self.tasks], dtype=torch.double)
        if warmup_length and not warmup_weights:
            raise ValueError(f"warmup_length={warmup_length} needs warmup_weights naming the warm-up tasks")
        self.warmup_length = warmup_length
        self.warmup_weights = None
        if warmup_length:
            outside = sorted(set(warmup_weights) - set(self.tasks))
            if outside:
                raise ValueError(f"warm-up weights name tasks that are not trained on: {outside}")
            if not all(w >= 0 for w in warmup_weights.values()) or not any(
                w > 0 for w in warmup_weights.values()
            ):
                raise ValueError(
                    f"warm-up weights must be non-negative with one positive, got {dict(warmup_weights)}"
                )
            self.warmup_weights = torch.tensor(
                [float(warmup_weights.get(t, 0)) for t in self.tasks], dtype=torch.double
            )
        self.epoch_length = epoch_length or sum(self.sizes)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0
        if tasks_per_image < 1:
            raise ValueError(f"tasks_per_image must be >= 1, got {tasks_per_image}")
        if tasks_per_image > 1 and image_keys is None:
            raise ValueError(
                f"tasks_per_image={tasks_per_image} needs image_keys (the image of every dataset index)"
            )
        self.tasks_per_image, self.image_keys = tasks_per_image, image_keys
        # Per task: image → the task's local indices that show it.
        self.by_image: list[dict[Hashable, list[int]]] = []
        if tasks_per_image > 1:
            for offset, size in zip(self.offsets, self.sizes, strict=True):
                same: dict[Hashable, list[int]] = defaultdict(list)
                for local in range(size):
                    same[image_keys[offset + local]].append(local)
                self.by_image.append(same)

    @property
    def probabilities(self) -> dict[str, float]:
        return dict(zip(self.tasks, (self.weights / self.weights.sum()).tolist(), strict=True))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        # Ranks get equal lengths (the stream's tail is dropped), so DDP ranks run the same number of steps.
        runs = self.epoch_length // (self.world_size * self.tasks_per_image)
        return runs * self.tasks_per_image

    def global_stream(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        # The warm-up counts samples from the start of training, so it may span several short epochs.
        warm = min(max(self.warmup_length - self.epoch * self.epoch_length, 0), self.epoch_length)
        choices = []
        for weights, count in ((self.warmup_weights, warm), (self.weights, self.epoch_length - warm)):
            if count:
                choices += torch.multinomial(weights, count, replacement=True, generator=generator).tolist()
        cursors = [0] * len(self.tasks)
        orders: list[Sequence[int]] = [[] for _ in self.tasks]
        stream: list[int] = []
        run_image = None
        for position, task in enumerate(choices):
            if position % self.tasks_per_image:  # inside a run: another question about the run's image
                run = stream[position - position % self.tasks_per_image :]
                same = [
                    i for i in self.by_image[task].get(run_image, ()) if self.offsets[task] + i not in run
                ]
                if same:
                    pick = int(torch.randint(len(same), (1,), generator=generator))
                    stream.append(self.offsets[task] + same[pick])
                    continue
            if cursors[task] % self.sizes[task] == 0:
                orders[task] = torch.randperm(self.sizes[task], generator=generator).tolist()
            stream.append(self.offsets[task] + orders[task][cursors[task] % self.sizes[task]])
            cursors[task] += 1
            if self.tasks_per_image > 1 and position % self.tasks_per_image == 0:
                run_image = self.image_keys[stream[-1]]
        return stream

    def __iter__(self) -> Iterator[int]:
        stream, run = self.global_stream(), self.tasks_per_image
        # Deal whole runs round-robin (one sample per run when tasks_per_image=1).
        runs = [
            stream[start : start + run]
            for start in range(self.rank * run, len(stream), self.world_size * run)
        ]
        yield from [index for indices in runs for index in indices][: len(self)]


class ResumableBatchSampler:
    """Batches of a `MixedTaskSampler`'s stream; optional length bucketing; resumable mid-epoch.

    With `lengths` (a cost per dataset index, e.g. target characters) and `bucket_batches=k`, every window of
    k batches is sorted by length before it is cut into batches, and the batches of the window are shuffled:
    padding waste drops while the task mix within a window is unchanged. The sampler's same-image runs
    (`tasks_per_image`) move as one, sorted by their longest sample; `batch_size` must be a multiple of the run.
    """

    def __init__(
        self,
        sampler: MixedTaskSampler,
        batch_size: int,
        lengths: Sequence[int] | None = None,
        bucket_batches: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if batch_size % sampler.tasks_per_image:
            raise ValueError(
                f"batch_size {batch_size} must be a multiple of tasks_per_image {sampler.tasks_per_image}, so that "
                "the samples of one image land in one batch"
            )
        self.sampler = sampler
        self.batch_size = batch_size
        self.lengths = lengths
        self.bucket_batches = bucket_batches
        # Batches of `resume_epoch` already trained on before an interruption (see `resume`).
        self.resume_epoch = -1
        self.skip = 0

    def resume(self, epoch: int, batches_done: int) -> None:
        """Skip the first `batches_done` batches when `epoch` is iterated (Lightning sets the sampler's epoch)."""
        self.resume_epoch, self.skip = epoch, batches_done

    def _skip(self) -> int:
        return self.skip if self.sampler.epoch == self.resume_epoch else 0

    def __len__(self) -> int:
        # The whole epoch, also while resuming: Lightning restores its own count of the batches done and ends the
        # epoch when that count reaches this length (it reads the length once, for every later epoch too), so
        # subtracting the skipped batches here would count them twice.
        return len(self.sampler) // self.batch_size

    def plan(self) -> list[list[int]]:
        stream = list(self.sampler)
        size = self.batch_size
        batches = [stream[i : i + size] for i in range(0, len(stream) - size + 1, size)]
        if not (self.lengths and self.bucket_batches > 1):
            return batches
        generator = torch.Generator().manual_seed(self.sampler.seed * 7919 + self.sampler.epoch)
        window, run = self.bucket_batches, self.sampler.tasks_per_image
        planned = []
        for start in range(0, len(batches), window):
            chunk = [i for batch in batches[start : start + window] for i in batch]
            runs = sorted((chunk[i : i + run] for i in range(0, len(chunk), run)), key=self._longest)
            chunk = [i for indices in runs for i in indices]
            bucketed = [chunk[i : i + size] for i in range(0, len(chunk), size)]
            planned.extend(bucketed[j] for j in torch.randperm(len(bucketed), generator=generator).tolist())
        return planned

    def _longest(self, indices: list[int]) -> int:
        return max(self.lengths[i] for i in indices)

    def __iter__(self) -> Iterator[list[int]]:
        skip = self._skip()
        self.resume_epoch = -1  # the interrupted epoch is only shortened once
        yield from self.plan()[skip:]
