"""First per-task quality figures for validation (the benchmark protocols live in f2lightning.evaluation).

Ground truth comes from parsing the target text with the same task parser as the predictions, so both sides
go through identical quantization (at most one bin apart from the raw annotation).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchmetrics import MeanMetric

from f2lightning.evaluation import BLEU, ReferringSegmentationIoU, box_iou

BOX_TASKS = {
    "<OD>", "<DENSE_REGION_CAPTION>", "<REGION_PROPOSAL>", "<CAPTION_TO_PHRASE_GROUNDING>",
    "<REFERRING_EXPRESSION_COMPREHENSION>", "<OPEN_VOCABULARY_DETECTION>",
}
POLYGON_TASKS = {"<REFERRING_EXPRESSION_SEGMENTATION>", "<REGION_TO_SEGMENTATION>"}
QUAD_TASKS = {"<OCR_WITH_REGION>"}


def matched_recall(pred: dict, target: dict, key: str = "bboxes", use_labels: bool = True, threshold: float = 0.5) -> tuple[int, int]:
    """(matched, total) ground-truth regions: greedy one-to-one matching by IoU ≥ threshold (and equal label)."""
    gt_boxes = [_as_box(b) for b in target.get(key, [])]
    pred_boxes = [_as_box(b) for b in pred.get(key, [])]
    gt_labels = target.get("labels") or [""] * len(gt_boxes)
    pred_labels = pred.get("labels") or [""] * len(pred_boxes)
    used: set[int] = set()
    matched = 0
    for box, label in zip(gt_boxes, gt_labels, strict=False):
        best, best_iou = None, threshold
        for j, (candidate, candidate_label) in enumerate(zip(pred_boxes, pred_labels, strict=False)):
            if j in used or (use_labels and candidate_label != label):
                continue
            iou = box_iou(box, candidate)
            if iou >= best_iou:
                best, best_iou = j, iou
        if best is not None:
            used.add(best)
            matched += 1
    return matched, len(gt_boxes)


def _as_box(coords: Sequence[float]) -> list[float]:
    # Quad boxes are compared through their bounding boxes.
    xs, ys = coords[0::2], coords[1::2]
    return [min(xs), min(ys), max(xs), max(ys)]


class TaskQuality(nn.Module):
    """Validation quality per task; `compute()` gives `{'<task>/<metric>': value}`.

    Metrics are created up front for every task so that all DDP ranks hold the same metric states, even a rank
    that saw no batch of some task.
    """

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__()
        self.metrics = nn.ModuleDict()
        for task in tasks:
            if task in BOX_TASKS or task in QUAD_TASKS:
                self.metrics[_key(task, "box_recall@0.5")] = MeanMetric()
            elif task in POLYGON_TASKS:
                self.metrics[_key(task, "mask")] = ReferringSegmentationIoU()
            else:
                self.metrics[_key(task, "exact_match")] = MeanMetric()
                self.metrics[_key(task, "bleu4")] = BLEU()

    def update(self, task: str, preds: Sequence[Any], targets: Sequence[Any], image_sizes: Sequence[tuple[int, int]]) -> None:
        if task in BOX_TASKS or task in QUAD_TASKS:
            key = "quad_boxes" if task in QUAD_TASKS else "bboxes"
            recall = self.metrics[_key(task, "box_recall@0.5")]
            for pred, target in zip(preds, targets, strict=True):
                matched, total = matched_recall(pred, target, key, use_labels=task != "<REGION_PROPOSAL>")
                if total:
                    recall.update(torch.tensor(matched / total), weight=total)
        elif task in POLYGON_TASKS:
            self.metrics[_key(task, "mask")].update(preds, targets, image_sizes)
        else:
            matches = [float(p.strip() == t.strip()) for p, t in zip(preds, targets, strict=True)]
            self.metrics[_key(task, "exact_match")].update(torch.tensor(matches))
            self.metrics[_key(task, "bleu4")].update(list(preds), [[t] for t in targets])

    def compute(self) -> dict[str, float]:
        results: dict[str, float] = {}
        for key, metric in self.metrics.items():
            task, name = key.split("__")
            with warnings.catch_warnings():
                # A task this rank saw no batch of still joins the sync; its NaN is the honest answer.
                warnings.filterwarnings("ignore", message=".*compute.*before the.*update", category=UserWarning)
                value = metric.compute()
            if name == "bleu4":
                results[f"{task}/bleu4"] = float(value["bleu_4"])
            elif isinstance(value, dict):
                results.update({f"{task}/{k}": float(v) for k, v in value.items()})
            else:
                results[f"{task}/{name.replace('@05', '@0.5')}"] = float(value)
        return results

    def reset(self) -> None:
        for metric in self.metrics.values():
            metric.reset()


def _key(task: str, metric: str) -> str:
    # ModuleDict keys may not contain '.', so `@0.5` is spelled without it here and restored in compute().
    return task.strip("<>") + "__" + metric.replace(".", "")
