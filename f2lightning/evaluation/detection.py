"""COCO box mAP through pycocotools' COCOeval."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import Any

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from f2lightning.evaluation._records import RecordMetric, to_list

# Order of COCOeval.stats for iouType='bbox' with the default maxDets (1, 10, 100).
_STAT_NAMES = (
    "map", "map_50", "map_75", "map_small", "map_medium", "map_large",
    "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large",
)  # fmt: skip
_TARGET_KEYS = ("bboxes", "labels", "iscrowd", "area")


def _xywh(box: Sequence[float]) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


class DetectionMAP(RecordMetric):
    """COCO detection mAP (``COCOeval``, ``iouType='bbox'``, maxDets 1/10/100, COCO area ranges).

    Every sample is kept and gathered across ranks; at ``compute`` the samples become images ``1..N`` of one
    COCO ground-truth json in rank order, category names become ids ``1..C`` in sorted name order (so every
    rank builds the same mapping), and COCOeval runs on that. Categories that only occur in predictions have
    no ground truth and are, as in COCOeval, left out of the averages. ``compute`` returns python floats
    named after ``COCOeval.stats``: ``map`` (@[.5:.95]), ``map_50``, ``map_75``, ``map_small``,
    ``map_medium``, ``map_large``, ``mar_1``, ``mar_10``, ``mar_100``, ``mar_small``, ``mar_medium``,
    ``mar_large``; as in COCOeval, ``-1`` means undefined (no ground truth in that range).
    """

    def update(self, preds: Sequence[Mapping[str, Any]], targets: Sequence[Mapping[str, Any]]) -> None:
        """Add one image per element.

        ``preds[i]``: ``{'bboxes': [[x0, y0, x1, y1], ...], 'labels': [name, ...], 'scores': [float, ...]}``
        (pixels; lists, numpy arrays or tensors). Florence-2 emits no confidence: derive ``scores`` with
        :func:`f2lightning.inference.scores.box_scores_from_logprobs`.
        ``targets[i]``: ``{'bboxes': ..., 'labels': ...}`` plus optional per-box ``'iscrowd'`` (0/1) and
        ``'area'`` (e.g. the mask area COCO uses for its size ranges; default: box area).
        """
        for pred, target in zip(preds, targets, strict=True):
            if "scores" not in pred:
                raise ValueError("detection predictions need per-box 'scores' (see box_scores_from_logprobs)")
            pred_fields = {key: to_list(pred[key]) for key in ("bboxes", "labels", "scores")}
            if len({len(values) for values in pred_fields.values()}) != 1:
                raise ValueError("bboxes, labels and scores of a prediction must have the same length")
            target_fields = {key: to_list(target[key]) for key in _TARGET_KEYS if key in target}
            self._add_record({"pred": pred_fields, "target": target_fields})

    def compute(self) -> dict[str, float]:
        records = self._records()
        names = sorted({name for r in records for part in ("pred", "target") for name in r[part]["labels"]})
        category_id = {name: i + 1 for i, name in enumerate(names)}
        images = [{"id": i + 1} for i in range(len(records))]
        gt_annotations, detections = [], []
        for image, record in zip(images, records):
            target = record["target"]
            for j, (box, label) in enumerate(zip(target["bboxes"], target["labels"], strict=True)):
                xywh = _xywh(box)
                gt_annotations.append(
                    {
                        "id": len(gt_annotations) + 1,
                        "image_id": image["id"],
                        "category_id": category_id[label],
                        "bbox": xywh,
                        "area": float(target["area"][j]) if "area" in target else xywh[2] * xywh[3],
                        "iscrowd": int(target["iscrowd"][j]) if "iscrowd" in target else 0,
                    }
                )
            pred = record["pred"]
            for box, label, score in zip(pred["bboxes"], pred["labels"], pred["scores"]):
                detections.append(
                    {
                        "image_id": image["id"],
                        "category_id": category_id[label],
                        "bbox": _xywh(box),
                        "score": score,
                    }
                )
        categories = [{"id": i, "name": name} for name, i in category_id.items()]
        # pycocotools prints progress on every step.
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = COCO()
            coco_gt.dataset = {"images": images, "categories": categories, "annotations": gt_annotations}
            coco_gt.createIndex()
            if detections:
                coco_dt = coco_gt.loadRes(detections)
            else:  # loadRes cannot take an empty list
                coco_dt = COCO()
                coco_dt.dataset = {"images": images, "categories": categories, "annotations": []}
                coco_dt.createIndex()
            evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        return {name: float(value) for name, value in zip(_STAT_NAMES, evaluator.stats)}
