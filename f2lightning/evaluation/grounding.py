"""Box-level grounding metrics: phrase grounding Recall@1 (Flickr30k Entities) and REC Accuracy@0.5.

Boxes are ``[x0, y0, x1, y1]`` in pixels with continuous coordinates: a box's area is
``(x1 - x0) * (y1 - y0)`` (no COCO-style ``+1``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torchmetrics import Metric

Box = Sequence[float]


def box_iou(a: Box, b: Box) -> float:
    """IoU of two ``[x0, y0, x1, y1]`` boxes; 0 when the union is empty."""
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def union_box(boxes: Sequence[Box]) -> list[float]:
    """Smallest box enclosing all ``boxes``."""
    return [
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    ]


def _phrase_key(label: str) -> str:
    # Generated phrases may differ from the annotation in case and spacing only.
    return " ".join(label.lower().split())


def _boxes(value: Any) -> list[list[float]]:
    return [[float(v) for v in box] for box in (value.tolist() if hasattr(value, "tolist") else value)]


class PhraseGroundingRecall(Metric):
    """Phrase grounding Recall@1 following the Flickr30k Entities protocol.

    Each ground-truth phrase counts once. Its top-1 prediction is the first predicted box whose label equals
    the phrase (compared lowercased, whitespace collapsed); it is correct when its IoU with the ground truth
    is >= ``iou_threshold``. A phrase may have several ground-truth boxes:

    - ``protocol='merged'`` (the original Flickr30k Entities evaluation, "merged boxes" in MDETR): the
      phrase's boxes are replaced by their union box, which the prediction must match;
    - ``protocol='any'`` ("any box" in MDETR): matching any one of the phrase's boxes suffices.

    A phrase without any predicted box counts as a miss. ``compute`` returns ``{'recall_at_1': tensor}``.
    """

    full_state_update = False

    def __init__(
        self, protocol: Literal["any", "merged"] = "any", iou_threshold: float = 0.5, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if protocol not in ("any", "merged"):
            raise ValueError(f"protocol must be 'any' or 'merged', got {protocol!r}")
        self.protocol = protocol
        self.iou_threshold = iou_threshold
        self.add_state("correct", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds: Sequence[Mapping[str, Any]], targets: Sequence[Mapping[str, Any]]) -> None:
        """``preds[i]`` / ``targets[i]``: ``{'bboxes': [[x0, y0, x1, y1], ...], 'labels': [phrase, ...]}`` of one
        image-caption pair (the phrase grounding parse result); a phrase repeated in the target labels has
        several ground-truth boxes."""
        correct = total = 0
        for pred, target in zip(preds, targets, strict=True):
            first_pred: dict[str, list[float]] = {}
            for box, label in zip(_boxes(pred["bboxes"]), pred["labels"]):
                first_pred.setdefault(_phrase_key(label), box)
            gt_boxes: dict[str, list[list[float]]] = {}
            for box, label in zip(_boxes(target["bboxes"]), target["labels"], strict=True):
                gt_boxes.setdefault(_phrase_key(label), []).append(box)
            for phrase, boxes in gt_boxes.items():
                total += 1
                box = first_pred.get(phrase)
                if box is None:
                    continue
                candidates = [union_box(boxes)] if self.protocol == "merged" else boxes
                correct += any(box_iou(box, gt) >= self.iou_threshold for gt in candidates)
        self.correct += correct
        self.total += total

    def compute(self) -> dict[str, torch.Tensor]:
        return {"recall_at_1": self.correct.double() / self.total}


class RECAccuracy(Metric):
    """Referring expression comprehension Accuracy@0.5 (RefCOCO/+/g protocol).

    A sample is correct when the first predicted box has IoU >= ``iou_threshold`` with the ground-truth box;
    no predicted box is a miss. ``compute`` returns ``{'accuracy': tensor}``.
    """

    full_state_update = False

    def __init__(self, iou_threshold: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.iou_threshold = iou_threshold
        self.add_state("correct", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds: Sequence[Mapping[str, Any]], targets: Sequence[Mapping[str, Any]]) -> None:
        """``preds[i]``: ``{'bboxes': [[x0, y0, x1, y1], ...], ...}`` (only the first box is used);
        ``targets[i]``: ``{'bboxes': [[x0, y0, x1, y1]], ...}`` holding the referred object's box."""
        correct = 0
        for pred, target in zip(preds, targets, strict=True):
            pred_boxes, gt_boxes = _boxes(pred["bboxes"]), _boxes(target["bboxes"])
            if len(gt_boxes) != 1:
                raise ValueError(f"a REC target has exactly one box, got {len(gt_boxes)}")
            correct += bool(pred_boxes) and box_iou(pred_boxes[0], gt_boxes[0]) >= self.iou_threshold
        self.correct += correct
        self.total += len(preds)

    def compute(self) -> dict[str, torch.Tensor]:
        return {"accuracy": self.correct.double() / self.total}
