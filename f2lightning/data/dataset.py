"""Per-task sample lists over records, image decoding in workers, and a collator with dynamic padding."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.utils.data import Dataset

from f2lightning.data.expand import Sample
from f2lightning.images import BadImageError, load_image
from f2lightning.processor import Florence2Processor, share_images

log = logging.getLogger(__name__)


SizeMismatch = Literal["skip", "rescale"]


def fit_declared_size(
    actual: tuple[int, int], declared: Sequence[int], name: str, size_mismatch: SizeMismatch
) -> tuple[tuple[int, int], dict[str, str] | None]:
    """The size a sample's locations refer to, and the rewrite to count when the file is not the size its record
    declares (`BadImageError` with reason `size_mismatch` under `size_mismatch='skip'`).

    `rescale` trusts that the annotations were made on the declared size and the file is a resized copy: targets are
    written in bins relative to the declared size, so they already land on the same places of the file's pixels,
    and only the reported size becomes the file's.
    """
    declared = (int(declared[0]), int(declared[1]))
    if tuple(actual) == declared:
        return declared, None
    message = (
        f"{name}: the file is {actual[0]}x{actual[1]} but its record declares {declared[0]}x{declared[1]}"
    )
    if size_mismatch == "skip":
        raise BadImageError(f"{message} (data.size_mismatch: rescale trusts the file)", "size_mismatch")
    return (int(actual[0]), int(actual[1])), {"reason": "size_mismatch_rescaled", "message": message}


@dataclass(frozen=True)
class SkippedItem:
    """What a dataset gives for a sample whose image cannot be used: counted by the collator, reported by the
    training module."""

    index: int
    event: dict[str, str]  # {"reason": BadImageError.reason, "message": its text}

    @classmethod
    def of(cls, error: BadImageError, index: int) -> SkippedItem:
        return cls(index, {"reason": error.reason, "message": str(error)})


@dataclass(frozen=True)
class DecodedImage:
    """The part of a sample that comes from its image, shared by the samples of that image. `rewritten` is the
    `{"reason", "message"}` of an image used changed (`fit_declared_size`), else None."""

    index: int
    image_key: str
    pixel_values: torch.Tensor
    image_size: tuple[int, int]
    rewritten: dict[str, str] | None = None


@dataclass(frozen=True)
class SampleItem:
    """One sample as every dataset (map-style or streaming) gives it to the `Collator`; the samples of one image
    share its `DecodedImage`."""

    image: DecodedImage
    task: str
    prompt: str
    target: str


class MultitaskDataset(Dataset):
    """Samples grouped by task; index space = concatenation in `task_sizes` order (see MixedTaskSampler)."""

    def __init__(
        self,
        samples_by_task: Mapping[str, Sequence[Sample]],
        processor: Florence2Processor,
        on_bad_sample: str = "skip",
        size_mismatch: SizeMismatch = "skip",
    ):
        self.samples_by_task = {task: list(samples) for task, samples in samples_by_task.items()}
        self.flat: list[Sample] = [s for samples in self.samples_by_task.values() for s in samples]
        self.processor = processor
        self.on_bad_sample = on_bad_sample
        self.size_mismatch = size_mismatch

    @property
    def task_sizes(self) -> dict[str, int]:
        return {task: len(samples) for task, samples in self.samples_by_task.items()}

    def __len__(self) -> int:
        return len(self.flat)

    def __getitem__(self, index: int) -> SampleItem | SkippedItem:
        return self._item(index, {})

    def __getitems__(self, indices: Sequence[int]) -> list[SampleItem | SkippedItem]:
        """A batch's samples (DataLoader's batched fetch): an image asked about several times is read once."""
        decoded: dict[str, tuple[torch.Tensor, tuple[int, int]] | BadImageError] = {}
        return [self._item(index, decoded) for index in indices]

    def _item(
        self, index: int, decoded: dict[str, tuple[torch.Tensor, tuple[int, int]] | BadImageError]
    ) -> SampleItem | SkippedItem:
        sample = self.flat[index]
        if sample.image_path not in decoded:
            try:
                image = load_image(sample.image_path)
                decoded[sample.image_path] = (self.processor.preprocess_image(image), image.size)
            except BadImageError as error:
                if self.on_bad_sample == "raise":
                    raise
                decoded[sample.image_path] = error
        image = decoded[sample.image_path]
        try:
            if isinstance(image, BadImageError):
                raise image
            pixels, actual = image
            image_size, rewrite = fit_declared_size(
                actual, sample.image_size, sample.image_path, self.size_mismatch
            )
        except BadImageError as error:
            if self.on_bad_sample == "raise":
                raise
            return SkippedItem.of(error, index)
        decoded_image = DecodedImage(index, sample.image_path, pixels, image_size, rewrite)
        return SampleItem(decoded_image, sample.task, sample.prompt, sample.target)


@dataclass
class Collator:
    """Tokenizes in the worker and pads each batch only to its own longest prompt and target.

    Samples of one image (`image_key`) share a row of `pixel_values`; `image_index` maps samples to rows.
    `skipped`, `rewritten` and `truncated` list `{"reason", "message"}` of the samples left out, of those whose
    image was used changed, and of those whose target was shortened to `max_target_length` (`fit_targets`).
    """

    processor: Florence2Processor

    def __call__(self, items: Sequence[SampleItem | SkippedItem]) -> dict[str, Any]:
        skipped = [item.event for item in items if isinstance(item, SkippedItem)]
        samples = [item for item in items if isinstance(item, SampleItem)]
        rewritten = [item.image.rewritten for item in samples if item.image.rewritten]
        batch: dict[str, Any] = {
            "skipped": skipped,
            "rewritten": rewritten,
            "truncated": [],
            "size": len(samples),
        }
        if not samples:
            return batch
        batch.update(self.processor.tokenize_prompts([item.prompt for item in samples]))
        targets, batch["truncated"] = self.processor.fit_targets(
            [item.task for item in samples], [item.target for item in samples],
            [item.image.image_size for item in samples],
        )  # fmt: skip
        batch["labels"] = self.processor.tokenize_targets(targets)
        firsts, batch["image_index"] = share_images([item.image.image_key for item in samples])
        batch["pixel_values"] = torch.stack([samples[i].image.pixel_values for i in firsts])
        batch["index"] = [item.image.index for item in samples]
        batch["image_size"] = [item.image.image_size for item in samples]
        batch["task"] = [item.task for item in samples]
        batch["target"] = [item.target for item in samples]
        return batch
