"""How close a free-text answer is to its reference: exact match, normalised edit distance and ANLS.

For answers that are long or structured (a JSON object, key-value pairs), where exact match alone says little:
one wrong digit in a 300-character JSON answer scores 0 there, 0.997 in similarity.

ANLS (Average Normalized Levenshtein Similarity) is the metric of ST-VQA and DocVQA (Biten et al. 2019, "Scene
Text Visual Question Answering"; Mathew et al. 2021, "DocVQA"): per answer ``1 - NL`` when the normalised
distance ``NL = edit(p, r) / max(|p|, |r|)`` is below the threshold 0.5, else 0, on lower-cased answers with
surrounding whitespace stripped, as DocVQA's evaluation compares them. ``ned`` is the strict distance (case
kept), so ``ned == 0`` exactly when the answer is an exact match.

Distances are exact Levenshtein distances (`f2lightning.evaluation.ocr.edit_distance`). torchmetrics'
``EditDistance`` / ``CharErrorRate`` are not used: their dynamic programme (sacrebleu's TER code) searches a
band of 25 cells around the diagonal and overestimates the distance of long texts that differ by a long
insertion (``"a" * 100`` against ``"b" * 30 + "a" * 100``: 35 instead of 30).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import Metric

from f2lightning.evaluation.ocr import edit_distance

ANLS_THRESHOLD = 0.5


def normalized_edit_distance(prediction: str, reference: str) -> float:
    """``edit(p, r) / max(|p|, |r|)`` in [0, 1]; 0 for two empty strings."""
    if prediction == reference:
        return 0.0
    return edit_distance(prediction, reference) / max(len(prediction), len(reference))


def normalized_levenshtein_similarity(
    prediction: str, reference: str, threshold: float = ANLS_THRESHOLD
) -> float:
    """One answer's ANLS term: ``1 - NL`` of the lower-cased, stripped texts when ``NL < threshold``, else 0."""
    distance = normalized_edit_distance(prediction.strip().lower(), reference.strip().lower())
    return 1.0 - distance if distance < threshold else 0.0


class TextSimilarity(Metric):
    """``compute()`` gives ``{'exact_match', 'ned', 'anls'}`` (tensors in [0, 1]) over every answer seen: the
    share of answers equal to their reference (surrounding whitespace aside), the mean normalised edit distance
    (0 is perfect) and ANLS (1 is perfect); see the module docstring."""

    full_state_update = False

    def __init__(self, anls_threshold: float = ANLS_THRESHOLD, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.anls_threshold = anls_threshold
        self.add_state("exact", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("ned_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("anls_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds: Sequence[str], targets: Sequence[str]) -> None:
        """``preds[i]``: the generated answer; ``targets[i]``: its reference."""
        exact, ned_sum, anls_sum = 0, 0.0, 0.0
        for pred, target in zip(preds, targets, strict=True):
            pred, target = pred.strip(), target.strip()
            exact += pred == target
            ned_sum += normalized_edit_distance(pred, target)
            anls_sum += normalized_levenshtein_similarity(pred, target, self.anls_threshold)
        self.exact += exact
        self.ned_sum += ned_sum
        self.anls_sum += anls_sum
        self.count += len(preds)

    def compute(self) -> dict[str, torch.Tensor]:
        return {
            "exact_match": self.exact.double() / self.count,
            "ned": self.ned_sum / self.count,
            "anls": self.anls_sum / self.count,
        }
