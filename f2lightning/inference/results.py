"""Generated text → the task's parsed result with confidences: what `predict`, `annotate` and `evaluate` report.

Florence-2 emits no confidence, so confidences come from the log-probabilities of the generated tokens: each box
(or OCR quad) is scored by the tokens that spelled it (`scores.box_scores_from_logprobs`), and every result has a
sequence score, the geometric-mean probability of all its tokens, in (0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from f2lightning.inference.generation import Generation
from f2lightning.inference.scores import box_scores_from_logprobs
from f2lightning.processor import Florence2Processor
from f2lightning.tasks import LOCATION_TOKENS, get_task

# Result keys whose items are scored from their own location tokens, and how many tokens spell one item.
SCORED_ITEMS = {"bboxes": 4, "quad_boxes": 8}


@dataclass(frozen=True)
class ScoredResult:
    """A parsed result (transformers' `post_process_generation` value for the task) whose box / quad lists carry
    `scores`; `score` is the whole sequence's. `fell_back`: the parser and the box scorer counted different
    numbers of items (malformed output, such as locations without a label), so every item got `score`."""

    result: Any
    score: float
    fell_back: bool = False


def _special_ids(processor: Florence2Processor) -> set[int]:
    tokenizer = processor.tokenizer
    return {
        i for i in (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) if i is not None
    }


def box_scores(generation: Generation, processor: Florence2Processor, coords_per_box: int = 4) -> list[float]:
    """Per-item confidence of one generation, in the order the parser reads the boxes (or quads)."""
    return box_scores_from_logprobs(
        generation.token_logprobs,
        generation.token_ids,
        loc_token_ids=set(processor.tokenizer.convert_tokens_to_ids(LOCATION_TOKENS)),
        coords_per_box=coords_per_box,
        ignore_token_ids=_special_ids(processor),
    )


def sequence_score(generation: Generation, processor: Florence2Processor) -> float:
    """Geometric-mean probability of the generated tokens (BOS / EOS / padding left out); 1.0 for no token."""
    special = _special_ids(processor)
    logprobs = [lp for t, lp in zip(generation.token_ids, generation.token_logprobs) if t not in special]
    return math.exp(math.fsum(logprobs) / len(logprobs)) if logprobs else 1.0


def scored_result(
    task: str, generation: Generation, image_size: tuple[int, int], processor: Florence2Processor
) -> ScoredResult:
    """Parse `generation` as `task` in pixels of `image_size`; with its token log-probabilities, add scores."""
    result = get_task(task).parse(generation.text, image_size)
    if generation.token_logprobs is None:
        raise ValueError(
            "scores need the generated tokens' log-probabilities: generate(..., with_logprobs=True)"
        )
    score = sequence_score(generation, processor)
    fell_back = False
    if isinstance(result, dict):
        for key, coords in SCORED_ITEMS.items():
            if key not in result:
                continue
            scores = box_scores(generation, processor, coords)
            if len(scores) != len(result[key]):
                fell_back, scores = True, [score] * len(result[key])
            result["scores"] = scores
    return ScoredResult(result, score, fell_back)
