"""Per-task sample lists over records, image decoding in workers, and a collator with dynamic padding."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from f2lightning.data.expand import Sample
from f2lightning.images import BadImageError, load_image
from f2lightning.processor import Florence2Processor, share_images

log = logging.getLogger(__name__)


class MultitaskDataset(Dataset):
    """Samples grouped by task; index space = concatenation in `task_sizes` order (see MixedTaskSampler)."""

    def __init__(self, samples_by_task: Mapping[str, Sequence[Sample]], processor: Florence2Processor, on_bad_sample: str = "skip"):
        self.samples_by_task = {task: list(samples) for task, samples in samples_by_task.items()}
        self.flat: list[Sample] = [s for samples in self.samples_by_task.values() for s in samples]
        self.processor = processor
        self.on_bad_sample = on_bad_sample

    @property
    def task_sizes(self) -> dict[str, int]:
        return {task: len(samples) for task, samples in self.samples_by_task.items()}

    def __len__(self) -> int:
        return len(self.flat)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._item(index, {})

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """A batch's samples (DataLoader's batched fetch): an image asked about several times is read once."""
        pixels: dict[str, torch.Tensor | BadImageError] = {}
        return [self._item(index, pixels) for index in indices]

    def _item(self, index: int, pixels: dict[str, torch.Tensor | BadImageError]) -> dict[str, Any]:
        sample = self.flat[index]
        if sample.image_path not in pixels:
            try:
                pixels[sample.image_path] = self.processor.preprocess_image(load_image(sample.image_path))
            except BadImageError as error:
                if self.on_bad_sample == "raise":
                    raise
                pixels[sample.image_path] = error
        image = pixels[sample.image_path]
        if isinstance(image, BadImageError):
            # Counted by the collator and reported by the training module at the end of the epoch.
            return {"skipped": str(image), "index": index}
        return {
            "index": index,
            "image_key": sample.image_path,
            "pixel_values": image,
            "prompt": sample.prompt,
            "target": sample.target,
            "task": sample.task,
            "image_size": sample.image_size,
        }


@dataclass
class Collator:
    """Tokenizes in the worker and pads each batch only to its own longest prompt and target.

    Samples of one image (`image_key`) share a row of `pixel_values`; `image_index` maps samples to rows.
    """

    processor: Florence2Processor

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        skipped = [item["skipped"] for item in items if "skipped" in item]
        items = [item for item in items if "skipped" not in item]
        batch: dict[str, Any] = {"skipped": skipped, "size": len(items)}
        if not items:
            return batch
        batch.update(self.processor.tokenize_prompts([item["prompt"] for item in items]))
        batch["labels"] = self.processor.tokenize_targets([item["target"] for item in items])
        firsts, batch["image_index"] = share_images([item["image_key"] for item in items])
        batch["pixel_values"] = torch.stack([items[i]["pixel_values"] for i in firsts])
        for key in ("index", "task", "image_size", "target"):
            batch[key] = [item[key] for item in items]
        return batch
