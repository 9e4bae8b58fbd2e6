"""Fast, exact generation for evaluation: length-aware batches, per-task settings, per-box likelihood scores.

Samples of one benchmark share a task, so batches are formed by image and prompt length: the questions about one
image (RefCOCO has several expressions per image, VQA several questions) stay together so the batch encodes the
image once, and sorting by the tokenized prompt length keeps padding (and wasted encoder positions) small.
Results come back in the input order and are the same as one-by-one generation because prompts are right-padded
with an attention mask (Florence2.generate).
"""

from __future__ import annotations

import contextlib
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from f2lightning.evaluation.box_scores import box_scores_from_logprobs
from f2lightning.images import load_image
from f2lightning.model import Florence2
from f2lightning.processor import Florence2Processor, share_images
from f2lightning.tasks import LOCATION_TOKENS, get_task


@dataclass(frozen=True)
class EvalSample:
    """One question put to the model: an image, the task's text input (if any) and what the metric compares
    against (`target`, in the shape the benchmark's metric expects). `key` names the sample in outputs."""

    image: str
    image_size: tuple[int, int]
    text_input: str | None
    target: Any
    key: str


@dataclass(frozen=True)
class Generation:
    """The generated text and, when asked for, the log-probability of each generated token."""

    text: str
    token_ids: list[int]
    token_logprobs: list[float] | None = None


@dataclass(frozen=True)
class GenerationSettings:
    batch_size: int = 16
    num_beams: int = 3
    max_new_tokens: int | None = None  # cap on the task's own budget (None: the task's)
    num_workers: int = 2
    device: str = "cpu"
    bf16: bool = False  # autocast to bfloat16 (CUDA)
    compile_image_encoder: bool = (
        False  # torch.compile DaViT + projector; the first batch of each shape compiles
    )
    progress: bool = True


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


class _Batches(Dataset):
    """Batch i = decoded, preprocessed images + right-padded prompts; a Dataset so DataLoader workers decode
    the next batches' images while the model generates."""

    def __init__(
        self,
        samples: Sequence[EvalSample],
        prompts: Sequence[str],
        batches: list[list[int]],
        processor: Florence2Processor,
    ) -> None:
        self.samples, self.prompts, self.batches, self.processor = samples, prompts, batches, processor

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> dict[str, Any]:
        indices = self.batches[index]
        # Questions about one image (REC, grounding, VQA) decode and encode it once.
        firsts, image_index = share_images([self.samples[i].image for i in indices])
        pixels = [self.processor.preprocess_image(load_image(self.samples[indices[i]].image)) for i in firsts]
        return {
            "indices": indices,
            "pixel_values": torch.stack(pixels),
            "image_index": image_index,
            **self.processor.tokenize_prompts([self.prompts[i] for i in indices]),
        }


def generate(
    model: Florence2,
    processor: Florence2Processor,
    task: str,
    samples: Sequence[EvalSample],
    settings: GenerationSettings,
    with_logprobs: bool = False,
    description: str = "generate",
) -> list[Generation]:
    """Generate `task` for every sample, in the samples' order.

    `with_logprobs` also returns each generated token's log-probability (from `generate(output_scores=True)` and
    `compute_transition_scores`, following each sequence's beam with `beam_indices`); it keeps one
    `(batch * beams, vocab)` float tensor per generated step, so ask for it only where it is needed (detection).
    """
    spec = get_task(task)
    prompts = [spec.build_prompt(text_input=s.text_input, image_size=s.image_size) for s in samples]
    lengths = [len(ids) for ids in processor.tokenizer(prompts)["input_ids"]]
    batches = length_aware_batches(lengths, settings.batch_size, [s.image for s in samples])
    kwargs = processor.generation_kwargs(task, settings.num_beams)
    if settings.max_new_tokens is not None:
        kwargs["max_new_tokens"] = min(kwargs["max_new_tokens"], settings.max_new_tokens)
    if with_logprobs:
        kwargs.update(output_scores=True, return_dict_in_generate=True)
    loader = DataLoader(
        _Batches(samples, prompts, batches, processor),
        batch_size=None,
        num_workers=settings.num_workers,
        pin_memory=settings.device.startswith("cuda"),
    )
    results: list[Generation | None] = [None] * len(samples)
    progress = tqdm(total=len(samples), desc=description, unit="sample", disable=not settings.progress)
    model.eval()
    if settings.compile_image_encoder:
        model.compile_image_encoder()
    for batch in loader:
        for index, generation in zip(
            batch["indices"], _generate_batch(model, processor, batch, kwargs, settings)
        ):
            results[index] = generation
        progress.update(len(batch["indices"]))
    progress.close()
    return results  # type: ignore[return-value]  # every index is in exactly one batch


def _generate_batch(
    model: Florence2,
    processor: Florence2Processor,
    batch: dict[str, Any],
    kwargs: dict[str, Any],
    settings: GenerationSettings,
) -> Iterator[Generation]:
    device = torch.device(settings.device)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if settings.bf16 else contextlib.nullcontext()
    )
    with torch.inference_mode(), autocast:
        output = model.generate(
            batch["pixel_values"].to(device, non_blocking=True),
            batch["input_ids"].to(device),
            batch["attention_mask"].to(device),
            batch["image_index"].to(device),
            **kwargs,
        )
        if not kwargs.get("return_dict_in_generate"):
            # Position 0 is the decoder start token, not generated.
            yield from (Generation(_decode(processor, ids), ids.tolist()) for ids in output[:, 1:].cpu())
            return
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
    for ids, sequence_logprobs in zip(tokens.cpu(), logprobs.cpu()):
        yield Generation(_decode(processor, ids), ids.tolist(), sequence_logprobs.tolist())


def _decode(processor: Florence2Processor, ids: torch.Tensor) -> str:
    # Special tokens stay: the task parsers strip BOS / EOS / padding and need `<loc_*>` / `<poly>` intact.
    return processor.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def box_scores(generation: Generation, processor: Florence2Processor) -> list[float]:
    """Per-box confidence of one generated detection, in the order the parser reads the boxes."""
    tokenizer = processor.tokenizer
    special = {tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id}
    return box_scores_from_logprobs(
        generation.token_logprobs,
        generation.token_ids,
        loc_token_ids=set(tokenizer.convert_tokens_to_ids(LOCATION_TOKENS)),
        ignore_token_ids={i for i in special if i is not None},
    )
