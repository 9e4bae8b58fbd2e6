"""OCR metrics: exact match, word accuracy (1 - WER) and normalised edit distance / ANLS."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import Metric


def edit_distance(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Levenshtein distance (unit insert / delete / substitute) between two sequences (strings or word lists)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def normalize_ocr_text(text: str, case_sensitive: bool = True) -> str:
    """Collapse every whitespace run (newlines included) to one space and strip the ends."""
    text = " ".join(text.split())
    return text if case_sensitive else text.lower()


class OCRMetrics(Metric):
    """Text recognition metrics on whitespace-normalised text (:func:`normalize_ocr_text`).

    ``compute`` returns tensors:

    - ``exact_match``: fraction of samples whose text equals the reference (for word-crop benchmarks, where
      a sample is one word, this is the usual "word accuracy");
    - ``word_accuracy``: ``1 - WER`` over the corpus, ``WER = sum(word-level edit distance) / sum(reference
      words)`` (the ASR convention; negative when predictions insert many extra words);
    - ``ned``: mean normalised character edit distance ``edit(p, r) / max(len(p), len(r))`` (0 for two empty
      strings); 0 is perfect, lower is better;
    - ``anls``: mean of ``1 - ned`` when ``ned < anls_threshold`` else 0 (ANLS of ST-VQA / DocVQA with one
      reference and threshold 0.5); 1 is perfect.
    """

    full_state_update = False

    def __init__(self, case_sensitive: bool = True, anls_threshold: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.case_sensitive = case_sensitive
        self.anls_threshold = anls_threshold
        self.add_state("exact", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("word_edits", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("ref_words", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("ned_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("anls_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds: Sequence[str], targets: Sequence[str]) -> None:
        """``preds[i]``: recognised text; ``targets[i]``: the reference text."""
        exact = word_edits = ref_words = 0
        ned_sum = anls_sum = 0.0
        for pred, target in zip(preds, targets, strict=True):
            pred = normalize_ocr_text(pred, self.case_sensitive)
            target = normalize_ocr_text(target, self.case_sensitive)
            exact += pred == target
            word_edits += edit_distance(pred.split(), target.split())
            ref_words += len(target.split())
            longest = max(len(pred), len(target))
            ned = edit_distance(pred, target) / longest if longest else 0.0
            ned_sum += ned
            anls_sum += 1.0 - ned if ned < self.anls_threshold else 0.0
        self.exact += exact
        self.word_edits += word_edits
        self.ref_words += ref_words
        self.ned_sum += ned_sum
        self.anls_sum += anls_sum
        self.count += len(preds)

    def compute(self) -> dict[str, torch.Tensor]:
        return {
            "exact_match": self.exact.double() / self.count,
            "word_accuracy": 1.0 - self.word_edits.double() / self.ref_words,
            "ned": self.ned_sum / self.count,
            "anls": self.anls_sum / self.count,
        }
