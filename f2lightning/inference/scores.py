"""Confidence scores for generated boxes, from the log-probabilities of the tokens that spelled them."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

import torch


def box_scores_from_logprobs(
    token_logprobs: torch.Tensor | Sequence[float],
    token_ids: torch.Tensor | Sequence[int],
    loc_token_ids: Collection[int],
    coords_per_box: int = 4,
    include_label_tokens: bool = True,
    ignore_token_ids: Collection[int] = (),
) -> list[float]:
    """Score each box of one generated sequence by the likelihood the model gave it.

    Florence-2 emits no box confidence, yet COCO mAP ranks boxes by one; a box generated with higher
    likelihood should rank higher. Score = geometric mean probability of the box's tokens,
    ``exp(mean(log p))``, in (0, 1]: the ``coords_per_box`` location tokens plus, with
    ``include_label_tokens``, the label text tokens written just before them (shared by all boxes that
    directly follow one label, as in phrase grounding's ``"a man<loc_..>x4<loc_..>x4"``). The mean rather than
    the sum keeps long labels from being penalised for their length.

    Args:
        token_logprobs: ``(T,)`` log-probability of each generated token, i.e. ``token_logprobs[i] =
            log p(token_ids[i] | prefix)`` (e.g. ``model.compute_transition_scores(out.sequences, out.scores,
            normalize_logits=True)[b]``, aligned with the sequence without its decoder start token).
        token_ids: ``(T,)`` the generated token ids.
        loc_token_ids: ids of the ``<loc_0>..<loc_999>`` tokens.
        coords_per_box: location tokens per box: 4 for boxes, 8 for quad boxes.
        include_label_tokens: whether the label tokens take part in the score.
        ignore_token_ids: ids skipped entirely (BOS / EOS / padding, task tokens).

    Returns:
        One score per box, in generation order: every run of consecutive location tokens is read in groups of
        ``coords_per_box`` and an incomplete trailing group is dropped, as the task parsers do.
    """
    logprobs = torch.as_tensor(token_logprobs, dtype=torch.float64).tolist()
    ids = torch.as_tensor(token_ids).tolist()
    if len(logprobs) != len(ids):
        raise ValueError(f"got {len(logprobs)} log-probabilities for {len(ids)} tokens")
    loc_ids = set(loc_token_ids)
    ignored = set(ignore_token_ids)
    scores: list[float] = []
    label: list[float] = []  # log-probs of the label text before the current box run
    box: list[float] = []  # log-probs of the current box's location tokens
    previous_was_loc = False
    for token, logprob in zip(ids, logprobs):
        if token in ignored:
            continue
        if token in loc_ids:
            box.append(logprob)
            previous_was_loc = True
            if len(box) == coords_per_box:
                parts = label + box if include_label_tokens else box
                scores.append(math.exp(sum(parts) / len(parts)))
                box = []
            continue
        if previous_was_loc:  # text after location tokens starts the next label; a partial box is dropped
            label, box = [], []
            previous_was_loc = False
        label.append(logprob)
    return scores
