"""Fast, exact generation: length-aware batches, per-task settings, per-token log-probabilities.

What `predict`, `annotate` and `evaluate` all run. The requests of one call share a task, so batches are formed by
image and prompt length: the questions about one image (RefCOCO has several expressions per image, VQA several
questions) stay together so the batch encodes the image once, and sorting by the tokenized prompt length keeps
padding (and wasted encoder positions) small. Results come back in the input order and are the same as one-by-one
generation because prompts are right-padded with an attention mask (Florence2.generate).
"""

from __future__ import annotations

import contextlib
from collections.abc import Hashable, Iterator, Sequence
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from f2lightning.data.skips import SkipReport
from f2lightning.images import BadImageError, load_image
from f2lightning.inference.common import ENGINES, Generation, GenerationSettings, decode_generated
from f2lightning.model import Florence2
from f2lightning.processor import Florence2Processor, share_images
from f2lightning.tasks import get_task


class Prompted(Protocol):
    """What generation needs of a request: an image file, the size its locations refer to (the original's,
    `(width, height)`), and the task's text input or region (`[x0, y0, x1, y1]` in those pixels) when it takes
    one. A benchmark's `EvalSample` and `predict`'s `Request` both are one."""

    @property
    def image(self) -> str: ...
    @property
    def image_size(self) -> tuple[int, int]: ...
    @property
    def text_input(self) -> str | None: ...
    @property
    def region(self) -> Sequence[float] | None: ...


def length_aware_batches(
    lengths: Sequence[int], batch_size: int, images: Sequence[Hashable] | None = None
) -> list[list[int]]:
    """Indices grouped into batches of similar length (stable: equal lengths keep their order).

    With `images` (one key per index), an image's indices stay next to each other, ordered by length, and the
    images are ordered by their longest prompt: the image tokens dwarf any prompt, so encoding an image once
    saves more than the few padded prompt positions a mixed-length batch costs.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    groups: dict[Hashable, list[int]] = {}
    for index, key in enumerate(images if images is not None else range(len(lengths))):
        groups.setdefault(key, []).append(index)
    ordered = sorted(groups.values(), key=lambda group: max(lengths[i] for i in group))
    order = [i for group in ordered for i in sorted(group, key=lengths.__getitem__)]
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


class PromptBatches(Dataset):
    """Batch i of one task's requests = decoded, preprocessed images + right-padded prompts, in
    `length_aware_batches` order; a Dataset so DataLoader workers decode the next batches' images while the model
    generates. With `skip_bad_images`, a request whose image cannot be decoded leaves its batch (`skipped`: its
    index, reason and message) instead of failing the run. `batches` (default: all) selects batches by position,
    e.g. one rank's share."""

    def __init__(
        self,
        task: str,
        samples: Sequence[Prompted],
        processor: Florence2Processor,
        batch_size: int,
        skip_bad_images: bool = False,
    ) -> None:
        spec = get_task(task)
        self.task, self.samples, self.processor, self.skip_bad_images = (
            spec.token,
            samples,
            processor,
            skip_bad_images,
        )
        self.prompts = [
            spec.build_prompt(text_input=s.text_input, region=s.region, image_size=s.image_size)
            for s in samples
        ]
        lengths = [len(ids) for ids in processor.tokenizer(self.prompts)["input_ids"]]
        # The processor would cut a longer prompt (a long grounding caption, say) and the model answer another
        # question: refuse it, naming the request.
        too_long = [(s, n) for s, n in zip(samples, lengths, strict=True) if n > processor.max_prompt_length]
        if too_long:
            sample, n = too_long[0]
            raise ValueError(
                f"{sample.image}: the {spec.token} prompt is {n} tokens, more than max_prompt_length "
                f"{processor.max_prompt_length} ({len(too_long)} request(s) like it); shorten the text input"
            )
        self.batches = length_aware_batches(lengths, batch_size, [s.image for s in samples])

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> dict[str, Any]:
        indices = self.batches[index]
        pixels: dict[str, torch.Tensor] = {}
        # (index, reason, message): plain values, since batches cross process boundaries from DataLoader workers.
        skipped: list[tuple[int, str, str]] = []
        # Questions about one image (REC, grounding, VQA) decode and encode it once.
        for path in dict.fromkeys(self.samples[i].image for i in indices):
            try:
                pixels[path] = self.processor.preprocess_image(load_image(path))
            except BadImageError as error:
                if not self.skip_bad_images:
                    raise
                skipped += [(i, error.reason, str(error)) for i in indices if self.samples[i].image == path]
        kept = [i for i in indices if self.samples[i].image in pixels]
        batch: dict[str, Any] = {"task": self.task, "indices": kept, "samples": [self.samples[i] for i in kept],
                                 "skipped": skipped}  # fmt: skip
        if not kept:
            return batch
        firsts, image_index = share_images([self.samples[i].image for i in kept])
        return {
            **batch,
            "pixel_values": torch.stack([pixels[self.samples[kept[i]].image] for i in firsts]),
            "image_index": image_index,
            **self.processor.tokenize_prompts([self.prompts[i] for i in kept]),
        }


def generation_kwargs(
    processor: Florence2Processor,
    task: str,
    num_beams: int,
    max_new_tokens: int | None = None,
    with_logprobs: bool = False,
) -> dict[str, Any]:
    """`Florence2.generate` settings of `task` (the processor's per-task ones), capped at `max_new_tokens`, and
    with every step's scores when `with_logprobs`."""
    kwargs = processor.generation_kwargs(task, num_beams)
    if max_new_tokens is not None:
        kwargs["max_new_tokens"] = min(kwargs["max_new_tokens"], max_new_tokens)
    if with_logprobs:
        kwargs.update(output_scores=True, return_dict_in_generate=True)
    return kwargs


def generations(
    model: Florence2,
    processor: Florence2Processor,
    task: str,
    samples: Sequence[Prompted],
    settings: GenerationSettings,
    with_logprobs: bool = False,
    report: SkipReport | None = None,
) -> Iterator[list[tuple[int, Generation]]]:
    """`(sample index, generation)` pairs of `task`, not in the samples' order: with `settings.engine`
    "continuous", one list per decoder step in which requests finished (requests enter in `length_aware_batches`
    order and leave the running batch as they end, `f2lightning.inference.engine`); with "batched", one list per
    batch as it finishes.

    `with_logprobs` also returns each generated token's log-probability (`generate(output_scores=True)` and
    `compute_transition_scores`, following each sequence's beam with `beam_indices`, or the engine's equal
    values); the batched path keeps one `(batch * beams, vocab)` float tensor per generated step, so ask for it
    only where it is needed (scores).
    With `report`, a sample whose image cannot be decoded is counted there by reason (`missing_image`,
    `undecodable_image`, ...) and left out; without one, the error stops the run.
    """
    if settings.engine not in ENGINES:
        raise ValueError(f"unknown generation engine {settings.engine!r}, expected one of {ENGINES}")
    kwargs = generation_kwargs(processor, task, settings.num_beams, settings.max_new_tokens, with_logprobs)
    loader = DataLoader(
        PromptBatches(task, samples, processor, settings.batch_size, skip_bad_images=report is not None),
        batch_size=None,
        num_workers=settings.num_workers,
        pin_memory=settings.device.startswith("cuda"),
    )
    model.eval()
    if settings.compile_image_encoder:
        model.compile_image_encoder()
    if settings.engine == "continuous":
        from f2lightning.inference.engine import continuous_generations  # it imports this module

        yield from continuous_generations(model, processor, loader, kwargs, settings, report)
        return
    device = torch.device(settings.device)
    for batch in loader:
        for _, reason, message in batch["skipped"]:
            report.drop(reason, example=message)  # type: ignore[union-attr]  # only skipped with a report
        if not batch["indices"]:
            continue
        on_device = {
            k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()
        }
        autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16) if settings.bf16 else contextlib.nullcontext()
        )
        with autocast:
            answers = generate_batch(model, processor, on_device, kwargs)
        yield list(zip(batch["indices"], answers))


def generate(
    model: Florence2,
    processor: Florence2Processor,
    task: str,
    samples: Sequence[Prompted],
    settings: GenerationSettings,
    with_logprobs: bool = False,
    description: str = "generate",
    report: SkipReport | None = None,
) -> list[Generation | None]:
    """`generations` in the samples' order, with a progress bar; a sample left out (see `report`) gives None."""
    results: list[Generation | None] = [None] * len(samples)
    progress = tqdm(total=len(samples), desc=description, unit="sample", disable=not settings.progress)
    for batch in generations(model, processor, task, samples, settings, with_logprobs, report):
        for index, generation in batch:
            results[index] = generation
        progress.update(len(batch))
    progress.close()
    return results


def generate_batch(
    model: Florence2, processor: Florence2Processor, batch: dict[str, Any], kwargs: dict[str, Any]
) -> list[Generation]:
    """One batch (`PromptBatches`', or the training collator's) with its tensors on the model's device, through
    `Florence2.generate(**kwargs)`."""
    with torch.inference_mode():
        output = model.generate(
            batch["pixel_values"],
            batch["input_ids"],
            batch["attention_mask"],
            batch.get("image_index"),
            **kwargs,
        )
        if not kwargs.get("return_dict_in_generate"):
            # Position 0 is the decoder start token, not generated.
            return [Generation(decode_generated(processor, ids), ids.tolist()) for ids in output[:, 1:].cpu()]
        # Greedy scores are processed logits, beam-search scores processed log-probs: normalising both gives the
        # log-probability of each chosen token under the (processed) next-token distribution.
        logprobs = model.language_model.compute_transition_scores(
            output.sequences,
            tuple(score.float() for score in output.scores),
            getattr(output, "beam_indices", None),
            normalize_logits=True,
        )
    # The transition scores cover the last `T` positions; the decoder start token before them has no score.
    tokens = output.sequences[:, -logprobs.shape[1] :]
    return [
        Generation(decode_generated(processor, ids), ids.tolist(), sequence_logprobs.tolist())
        for ids, sequence_logprobs in zip(tokens.cpu(), logprobs.cpu())
    ]
