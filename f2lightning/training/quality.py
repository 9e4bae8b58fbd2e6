"""First per-task quality figures for validation (the benchmark protocols live in f2lightning.evaluation).

The metric follows a task's output format (`Task.output`), never its token, so a registered task is scored like
the built-in tasks of its format. Ground truth comes from parsing the target text with the same task parser as
the predictions, so both sides go through identical quantization (at most one bin apart from the raw annotation).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchmetrics import MeanMetric

from f2lightning.data.expand import Sample
from f2lightning.evaluation import BLEU, ReferringSegmentationIoU, box_iou
from f2lightning.evaluation.text_similarity import TextSimilarity
from f2lightning.geometry import bounding_box
from f2lightning.tasks import get_task


@dataclass(frozen=True)
class BoxRecall:
    """Recall@0.5 of the result's shapes under `key` (quad boxes through their bounding boxes), labels compared
    when `use_labels`."""

    key: str = "bboxes"
    use_labels: bool = True


MASK_IOU, TEXT_MATCH, TEXT_SIMILARITY = "mask", "text", "text_similarity"
# Output format (f2lightning.tasks.formats) -> how validation scores it: box recall, polygon mask IoU, exact
# match + BLEU-4 of the text, or exact match + normalised edit distance + ANLS of free text.
FORMAT_METRICS: dict[str, BoxRecall | str] = {
    "text": TEXT_MATCH,
    "free_text": TEXT_SIMILARITY,
    "boxes": BoxRecall(),
    "phrase_grounding": BoxRecall(),
    "region_proposals": BoxRecall(use_labels=False),  # proposals have no labels
    "boxes_or_polygons": BoxRecall(use_labels=False),  # the prompt names the one category
    "quad_boxes": BoxRecall("quad_boxes"),
    "polygons": MASK_IOU,
}


def task_metric(task: str) -> BoxRecall | str:
    """How validation scores `task` (a token or name): its output format's entry in `FORMAT_METRICS`."""
    output = get_task(task).output
    if output not in FORMAT_METRICS:
        raise KeyError(f"{task}: no validation metric for output format {output!r}; map it in FORMAT_METRICS")
    return FORMAT_METRICS[output]


def matched_recall(
    pred: dict, target: dict, key: str = "bboxes", use_labels: bool = True, threshold: float = 0.5
) -> tuple[int, int]:
    """(matched, total) ground-truth regions: greedy one-to-one matching by IoU ≥ threshold (and equal label)."""
    # Quad boxes are compared through their bounding boxes.
    gt_boxes = [bounding_box(b) for b in target.get(key, [])]
    pred_boxes = [bounding_box(b) for b in pred.get(key, [])]
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


class TaskQuality(nn.Module):
    """Validation quality per task; `compute()` gives `{'<task>/<metric>': value}`.

    Metrics are created up front for every task so that all DDP ranks hold the same metric states, even a rank
    that saw no batch of some task.
    """

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__()
        self.scoring = {task: task_metric(task) for task in tasks}
        self.metrics = nn.ModuleDict()
        for task, scoring in self.scoring.items():
            if isinstance(scoring, BoxRecall):
                self.metrics[_key(task, "box_recall@0.5")] = MeanMetric()
            elif scoring == MASK_IOU:
                self.metrics[_key(task, "mask")] = ReferringSegmentationIoU()
            elif scoring == TEXT_SIMILARITY:
                self.metrics[_key(task, "similarity")] = TextSimilarity()
            else:
                self.metrics[_key(task, "exact_match")] = MeanMetric()
                self.metrics[_key(task, "bleu4")] = BLEU()

    def update(
        self, task: str, preds: Sequence[Any], targets: Sequence[Any], image_sizes: Sequence[tuple[int, int]]
    ) -> None:
        scoring = self.scoring[task]
        if isinstance(scoring, BoxRecall):
            recall = self.metrics[_key(task, "box_recall@0.5")]
            for pred, target in zip(preds, targets, strict=True):
                matched, total = matched_recall(pred, target, scoring.key, use_labels=scoring.use_labels)
                if total:
                    recall.update(torch.tensor(matched / total), weight=total)
        elif scoring == MASK_IOU:
            self.metrics[_key(task, "mask")].update(preds, targets, image_sizes)
        elif scoring == TEXT_SIMILARITY:
            self.metrics[_key(task, "similarity")].update(list(preds), list(targets))
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
                warnings.filterwarnings(
                    "ignore", message=".*compute.*before the.*update", category=UserWarning
                )
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


def image_blind_prior(
    train: Mapping[str, Sequence[Sample]], val: Mapping[str, Sequence[Sample]]
) -> dict[str, float]:
    """What a model that ignores the image scores on `val`, in `TaskQuality.compute()`'s keys.

    Its answer to each validation sample is the most frequent training target of the same prompt (a VQA question, a
    referring expression), or of the task where the prompt never occurred in training (prompts holding a region).
    A trained model's distance from these figures is what it learned from the images.
    """
    tasks = [task for task in val if task in train and val[task]]
    quality = TaskQuality(tasks)
    for task in tasks:
        by_prompt: dict[str, Counter[str]] = {}
        for sample in train[task]:
            by_prompt.setdefault(sample.prompt, Counter())[sample.target] += 1
        overall = Counter(sample.target for sample in train[task]).most_common(1)[0][0]
        answers = [
            by_prompt[s.prompt].most_common(1)[0][0] if s.prompt in by_prompt else overall for s in val[task]
        ]
        parse, sizes = get_task(task).parse, [s.image_size for s in val[task]]
        preds = [parse(answer, size) for answer, size in zip(answers, sizes, strict=True)]
        targets = [parse(s.target, size) for s, size in zip(val[task], sizes, strict=True)]
        quality.update(task, preds, targets, sizes)
    return quality.compute()
