"""One object that turns (images, tasks) into model tensors and generated ids back into task results.

Like transformers' `Florence2Processor`: images are resized to a square `image_size` (no crop; locations are
quantized relative to the original size, so no coordinate transform is needed), normalized with ImageNet
statistics, and task tokens become natural-language prompts.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase

from f2lightning.images import to_rgb
from f2lightning.model.config import IMAGENET_MEAN, IMAGENET_STD, Florence2Config
from f2lightning.tasks import get_task
from f2lightning.tasks.formats import BANNED_GROUNDING_PHRASES


def share_images(image_keys: Sequence[Hashable]) -> tuple[list[int], torch.Tensor]:
    """Let samples that show the same image share one row of `pixel_values`.

    Returns the positions of the first sample of each distinct image (the rows to stack, in order) and
    `image_index`, the row each sample reads (`Florence2.forward(image_index=...)`). Exact because
    preprocessing is deterministic: the same file always gives the same tensor.
    """
    rows: dict[Hashable, int] = {}
    firsts: list[int] = []
    for position, key in enumerate(image_keys):
        if key not in rows:
            rows[key] = len(firsts)
            firsts.append(position)
    return firsts, torch.tensor([rows[key] for key in image_keys], dtype=torch.long)


class Florence2Processor:
    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        image_size: int = 768,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
        max_prompt_length: int = 256,
        max_target_length: int = 1024,
    ) -> None:
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.mean = torch.tensor(image_mean).view(3, 1, 1)
        self.std = torch.tensor(image_std).view(3, 1, 1)
        self.max_prompt_length = max_prompt_length
        self.max_target_length = max_target_length

    @classmethod
    def for_model(
        cls, config: Florence2Config, tokenizer: PreTrainedTokenizerBase, **lengths: int
    ) -> Florence2Processor:
        """The processor of a model: its config's input resolution and normalisation, the run's tokenizer, which
        must fit the model's vocabulary. `lengths`: `max_prompt_length` / `max_target_length`."""
        if len(tokenizer) > config.text.vocab_size:
            raise ValueError(
                f"the tokenizer has {len(tokenizer)} tokens but the model only {config.text.vocab_size}: "
                "it is not the tokenizer this model was trained with"
            )
        return cls(tokenizer, config.image_size, config.image_mean, config.image_std, **lengths)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, tokenizer: str | Path | None = None, **lengths: int
    ) -> Florence2Processor:
        """The processor saved with a checkpoint (any layout `Florence2.from_pretrained` reads); `tokenizer`, a
        tokenizer directory, replaces the checkpoint's own (needed when it has none)."""
        from f2lightning.model.checkpoints import read_config, read_tokenizer
        from f2lightning.tokenizer import load_tokenizer

        path = Path(path)
        loaded = load_tokenizer(tokenizer) if tokenizer is not None else read_tokenizer(path)
        if loaded is None:
            raise ValueError(f"{path}: no tokenizer files beside the weights; pass a tokenizer directory")
        return cls.for_model(read_config(path), loaded, **lengths)

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the processor into `path` (beside `Florence2.save_pretrained`'s weights and config) as transformers
        saves its own: tokenizer files, `processor_config.json` and the image processor's settings, so that
        `transformers.AutoProcessor.from_pretrained(path)` preprocesses as this processor does."""
        self.to_transformers().save_pretrained(path)
        return Path(path)

    def to_transformers(self) -> Any:
        """transformers' `Florence2Processor` with this one's resolution, normalisation and tokenizer."""
        from transformers import CLIPImageProcessor
        from transformers import Florence2Processor as TransformersProcessor

        side = self.image_size
        images = CLIPImageProcessor(
            size={"height": side, "width": side},
            do_center_crop=False,
            resample=Image.Resampling.BICUBIC,
            image_mean=self.mean.flatten().tolist(),
            image_std=self.std.flatten().tolist(),
            # The image encoder's tokens: one per 32x32 patch plus the pooled one (`Florence2.encode_image`).
            image_seq_length=(side // 32) ** 2 + 1,
        )
        # Parse settings as the released processor_config.json has them: every output kind with its defaults, phrase
        # grounding without the banned phrases (f2lightning.tasks.formats parses the same way).
        kinds = TransformersProcessor(
            image_processor=images, tokenizer=self.tokenizer
        ).tasks_answer_post_processing_type
        parsing: dict[str, Any] = {kind: {} for kind in sorted(set(kinds.values()))}
        parsing["phrase_grounding"] = {"banned_grounding_tokens": sorted(BANNED_GROUNDING_PHRASES)}
        return TransformersProcessor(
            image_processor=images, tokenizer=self.tokenizer, post_processor_config=parsing
        )

    # ------------------------------------------------------------------ inputs
    def preprocess_image(self, image: Image.Image) -> torch.Tensor:
        """Any Pillow image → normalized `(3, image_size, image_size)` float tensor."""
        image = to_rgb(image).resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
        return (pixels - self.mean) / self.std

    def build_prompts(
        self,
        tasks: Sequence[str],
        image_sizes: Sequence[tuple[int, int]],
        text_inputs: Sequence[str | None] | None = None,
        regions: Sequence[Sequence[float] | None] | None = None,
    ) -> list[str]:
        text_inputs = text_inputs or [None] * len(tasks)
        regions = regions or [None] * len(tasks)
        return [
            get_task(task).build_prompt(text_input=text, region=region, image_size=size)
            for task, text, region, size in zip(tasks, text_inputs, regions, image_sizes, strict=True)
        ]

    def tokenize_prompts(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Right-padded prompt ids (`<s> prompt </s>`) with their attention mask."""
        encoded = self.tokenizer(
            list(prompts),
            padding=True,
            truncation=True,
            max_length=self.max_prompt_length,
            return_tensors="pt",
        )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def fit_targets(
        self, tasks: Sequence[str], targets: Sequence[str], image_sizes: Sequence[tuple[int, int]]
    ) -> tuple[list[str], list[dict[str, str]]]:
        """Targets that fit `max_target_length` tokens, and the `{"reason", "message"}` of each one shortened.

        A target of items (boxes, quad boxes, polygons, grounded phrases: a task whose parse is a dict of lists)
        keeps its first whole items (`target_truncated_at_item`), so no box is cut in the middle; any other is cut
        at the token limit (`target_truncated`). The tokenizer keeps the end token either way.
        """
        lengths = [len(ids) for ids in self.tokenizer(list(targets))["input_ids"]]
        fitted, events = list(targets), []
        for i, (task, target, size, length) in enumerate(
            zip(tasks, targets, image_sizes, lengths, strict=True)
        ):
            if length <= self.max_target_length:
                continue
            shortened = self._whole_items(task, target, size)
            reason = "target_truncated" if shortened is None else "target_truncated_at_item"
            if shortened is not None:
                fitted[i] = shortened
            message = f"{task}: a {length}-token target, max_target_length {self.max_target_length}"
            events.append({"reason": reason, "message": message})
        return fitted, events

    def _whole_items(self, task: str, target: str, image_size: tuple[int, int]) -> str | None:
        """The longest prefix of whole items of `target` that fits, or None when it has no items."""
        spec = get_task(task)
        parsed = spec.parse(target, image_size)
        if not isinstance(parsed, dict) or not all(isinstance(v, list) for v in parsed.values()):
            return None
        count = min(len(v) for v in parsed.values())

        def keep(k: int) -> str:
            return spec.serialize({key: value[:k] for key, value in parsed.items()}, image_size)

        low, high = 0, count  # the largest k whose serialization fits: binary search over item counts
        while low < high:
            middle = (low + high + 1) // 2
            if len(self.tokenizer(keep(middle))["input_ids"]) <= self.max_target_length:
                low = middle
            else:
                high = middle - 1
        return keep(low)

    def tokenize_targets(self, targets: Sequence[str]) -> torch.Tensor:
        """Target ids as labels: padding is -100, the `ignore_index` of BART's cross-entropy, so it never counts in
        the loss."""
        encoded = self.tokenizer(
            list(targets),
            padding=True,
            truncation=True,
            max_length=self.max_target_length,
            return_tensors="pt",
        )
        return encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)

    def __call__(
        self,
        images: Sequence[Image.Image],
        tasks: Sequence[str],
        text_inputs: Sequence[str | None] | None = None,
        regions: Sequence[Sequence[float] | None] | None = None,
        targets: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Batch for `Florence2.forward` / `generate`; `image_sizes` are the originals, `(width, height)`."""
        if len(images) != len(tasks):
            raise ValueError(f"got {len(images)} images but {len(tasks)} tasks")
        sizes = [image.size for image in images]
        batch: dict[str, Any] = {
            "pixel_values": torch.stack([self.preprocess_image(image) for image in images]),
            **self.tokenize_prompts(self.build_prompts(tasks, sizes, text_inputs, regions)),
            "image_sizes": sizes,
            "tasks": list(tasks),
        }
        if targets is not None:
            batch["labels"] = self.tokenize_targets(targets)
        return batch

    # ------------------------------------------------------------------ outputs
    def decode(self, generated_ids: torch.Tensor) -> list[str]:
        """Generated ids → text with location tokens kept (BOS / EOS / padding are stripped by the parsers)."""
        return self.tokenizer.batch_decode(
            generated_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False
        )

    def post_process(
        self, generated_ids: torch.Tensor, tasks: Sequence[str], image_sizes: Sequence[tuple[int, int]]
    ) -> list[Any]:
        """Parsed results, one per sample, in original-image pixels (see `f2lightning.tasks.parse`)."""
        texts = self.decode(generated_ids)
        return [
            get_task(task).parse(text, size)
            for text, task, size in zip(texts, tasks, image_sizes, strict=True)
        ]

    def generation_kwargs(self, task: str, num_beams: int = 3) -> dict[str, Any]:
        """Per-task generation settings: output length by task, no n-gram blocking on location outputs."""
        spec = get_task(task)
        kwargs: dict[str, Any] = {
            "max_new_tokens": spec.max_new_tokens,
            "num_beams": num_beams,
            "do_sample": False,
        }
        if not spec.location_heavy:
            kwargs["no_repeat_ngram_size"] = 3
        return kwargs
