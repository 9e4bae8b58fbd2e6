"""Referring expression segmentation: mIoU and oIoU over polygon predictions rasterised with pycocotools."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torchmetrics import Metric


def polygons_to_rle(objects: Sequence[Sequence[Sequence[float]]], width: int, height: int) -> dict:
    """Union of all polygons of all objects as one COCO RLE mask of ``height x width``.

    ``objects`` is the ``'polygons'`` field: ``[[[x, y, x, y, ...], ...], ...]`` (several polygons per
    object), pixels, rasterised exactly like COCO segmentations. Polygons with fewer than 3 points enclose
    no area and are dropped (pycocotools would misread a 4-number polygon as a box); a dangling odd
    coordinate is ignored.
    """
    polygons = [
        [float(v) for v in poly[: len(poly) // 2 * 2]] for obj in objects for poly in obj if len(poly) >= 6
    ]
    if not polygons:
        return mask_utils.encode(np.zeros((height, width), dtype=np.uint8, order="F"))
    return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))


class ReferringSegmentationIoU(Metric):
    """RefCOCO-style referring segmentation metrics.

    Predicted and ground-truth polygons are rasterised (:func:`polygons_to_rle`) to one mask per sample.
    ``miou`` is the mean of per-sample IoUs (a sample where both masks are empty has IoU 1);
    ``oiou`` ("overall IoU") is cumulative intersection over cumulative union, which weights large objects
    more. ``compute`` returns ``{'miou': tensor, 'oiou': tensor}``.
    """

    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("iou_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("intersection", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("union", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(
        self,
        preds: Sequence[Mapping[str, Any]],
        targets: Sequence[Mapping[str, Any]],
        image_sizes: Sequence[tuple[int, int]],
    ) -> None:
        """``preds[i]`` / ``targets[i]``: ``{'polygons': [[[x, y, ...], ...], ...], ...}`` in pixels;
        ``image_sizes[i]``: ``(width, height)`` of that image."""
        iou_sum = intersection_sum = union_sum = 0.0
        for pred, target, (width, height) in zip(preds, targets, image_sizes, strict=True):
            pred_rle = polygons_to_rle(pred["polygons"], width, height)
            gt_rle = polygons_to_rle(target["polygons"], width, height)
            inter = float(mask_utils.area(mask_utils.merge([pred_rle, gt_rle], intersect=True)))
            union = float(mask_utils.area(pred_rle)) + float(mask_utils.area(gt_rle)) - inter
            iou_sum += inter / union if union > 0 else 1.0
            intersection_sum += inter
            union_sum += union
        self.iou_sum += iou_sum
        self.count += len(preds)
        self.intersection += intersection_sum
        self.union += union_sum

    def compute(self) -> dict[str, torch.Tensor]:
        return {"miou": self.iou_sum / self.count, "oiou": self.intersection / self.union}
