"""The paper's benchmarks (Tables 4, 5 and 6): how each turns its public files into samples, which task it asks,
how its metric scores the answers, and the numbers the paper reports. One more, `instructions`, scores the
free-form instructions of your own records (not in the paper).

A benchmark's *kind* holds the protocol shared by several benchmarks (captioning → CIDEr, referring expressions →
Accuracy@0.5, ...); a `Benchmark` adds the name, the table columns and the paper's numbers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from f2lightning.data.converters.base import image_path
from f2lightning.data.expand import task_annotations
from f2lightning.data.records import read_records
from f2lightning.data.schema import Record
from f2lightning.evaluation.caption import BLEU, CIDEr, resolve_caption_tokenizer
from f2lightning.evaluation.detection import DetectionMAP
from f2lightning.evaluation.grounding import PhraseGroundingRecall, RECAccuracy
from f2lightning.evaluation.samples import EvalSample
from f2lightning.evaluation.segmentation import ReferringSegmentationIoU
from f2lightning.evaluation.text_similarity import TextSimilarity
from f2lightning.evaluation.vqa import VQAAccuracy

# Rows of the paper's tables that report Florence-2 (Table 4: zero-shot; Tables 5 and 6: generalist fine-tuned).
ZERO_SHOT_B = "Florence-2-B zero-shot (Table 4)"
ZERO_SHOT_L = "Florence-2-L zero-shot (Table 4)"
GENERALIST_B = "Florence-2-B generalist (Tables 5/6)"
GENERALIST_L = "Florence-2-L generalist (Tables 5/6)"
PAPER_ROWS = (ZERO_SHOT_B, ZERO_SHOT_L, GENERALIST_B, GENERALIST_L)

Scorer = Callable[[Sequence[EvalSample], Sequence[Any], Mapping[str, Any]], dict[str, float | str]]


@dataclass(frozen=True)
class Kind:
    """A protocol: the task asked, the samples a record yields, and the metric (`score` returns the headline
    number under `'score'`, in percent as the paper prints it, plus any secondary numbers).

    `load`, when set, reads the benchmark's files itself instead of going through a record converter.
    `check_options`, when set, rejects a config's `metric` options when the config is read, before generation.
    """

    task: str
    score: Scorer
    samples: Callable[[Record], list[EvalSample]] | None = None
    load: Callable[..., list[EvalSample]] | None = None
    needs_box_scores: bool = False  # mAP ranks boxes: generate with token log-probabilities
    check_options: Callable[[Mapping[str, Any]], None] | None = None


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str  # column group header, as in the paper
    metric: str
    kind: Kind
    paper: dict[str, dict[str, float]] = field(default_factory=dict)  # row → {paper column: value}
    note: str = ""


# ----------------------------------------------------------------------------------------------- samples
def _key(record: Record, index: int) -> str:
    return f"{record.id or os.path.basename(record.image)}#{index}"


def caption_samples(record: Record) -> list[EvalSample]:
    """One sample per image; all its captions are the references."""
    refs = record.texts.get("brief", [])
    return [EvalSample(record.image, record.image_size, None, list(refs), _key(record, 0))] if refs else []


def annotation_samples(task: str) -> Callable[[Record], list[EvalSample]]:
    """One sample per (task input, annotation) the record supports, via the training data's own expansion:
    REC (one per expression), RES (one per expression of a region with a mask), phrase grounding (one per
    sentence)."""

    def samples(record: Record) -> list[EvalSample]:
        return [
            EvalSample(record.image, record.image_size, a.text_input, a.annotation, _key(record, i))
            for i, a in enumerate(task_annotations(record, [task]))
        ]

    return samples


def vqa_samples(record: Record) -> list[EvalSample]:
    """One sample per question; all human answers are kept (soft accuracy needs them)."""
    return [
        EvalSample(record.image, record.image_size, q.question, list(q.answers), _key(record, i))
        for i, q in enumerate(record.vqa)
    ]


# ----------------------------------------------------------------------------------------------- scores
def _percent(value: Any) -> float:
    return 100.0 * float(value)


def caption_score(
    samples: Sequence[EvalSample], preds: Sequence[Any], options: Mapping[str, Any]
) -> dict[str, float | str]:
    """CIDEr-D (+ BLEU-4), tokenised by coco-caption's own PTBTokenizer where Java can run it (`metric:
    {tokenizer: auto}`, the default; `ptb` insists, `python` never starts Java)."""
    targets = [s.target for s in samples]
    tokenizer = resolve_caption_tokenizer(options.get("tokenizer", "auto"))
    cider, bleu = CIDEr(tokenizer=tokenizer), BLEU(tokenizer=tokenizer)
    cider.update(list(preds), targets)
    bleu.update(list(preds), targets)
    return {"score": _percent(cider.compute()["cider"]), "bleu_4": _percent(bleu.compute()["bleu_4"]),
            "tokenizer": tokenizer}  # fmt: skip


def check_caption_options(options: Mapping[str, Any]) -> None:
    tokenizer = options.get("tokenizer", "auto")
    if tokenizer != "auto":  # `auto` always runs; `ptb` must be able to, and anything else is a typo
        resolve_caption_tokenizer(tokenizer)


def detection_score(
    samples: Sequence[EvalSample], preds: Sequence[Any], options: Mapping[str, Any]
) -> dict[str, float]:
    metric = DetectionMAP()
    metric.update(list(preds), [s.target for s in samples])
    stats = metric.compute()
    return {"score": _percent(stats["map"]), **{k: _percent(v) for k, v in stats.items() if k != "map"}}


def grounding_score(
    samples: Sequence[EvalSample], preds: Sequence[Any], options: Mapping[str, Any]
) -> dict[str, float]:
    metric = PhraseGroundingRecall(protocol=options.get("protocol", "any"))
    metric.update(list(preds), [s.target for s in samples])
    return {"score": _percent(metric.compute()["recall_at_1"])}


def rec_score(
    samples: Sequence[EvalSample], preds: Sequence[Any], options: Mapping[str, Any]
) -> dict[str, float]:
    metric = RECAccuracy()
    metric.update(list(preds), [s.target for s in samples])
    return {"score": _percent(metric.compute()["accuracy"])}


def res_score(
    samples: Sequence[EvalSample], preds: Sequence[Any], options: Mapping[str, Any]
) -> dict[str, float]:
    metric = ReferringSegmentationIoU()
    metric.update(list(preds), [s.target for s in samples], [s.image_size for s in samples])
    result = metric.compute()
    return {"score": _percent(result["miou"]), "oiou": _percent(result["oiou"])}


def vqa_score(
    samples: Sequence[EvalSample], preds: Sequence[Any], options: Mapping[str, Any]
) -> dict[str, float]:
    # VQAv2's answers are pre-normalised; TextVQA's and VizWiz's are raw and need the full normalisation.
    metric = VQAAccuracy(normalize_references=options.get("normalize_references", False))
    metric.update(list(preds), [s.target for s in samples])
    return {"score": _percent(metric.compute()["accuracy"])}


def instruction_score(
    samples: Sequence[EvalSample], preds: Sequence[Any], options: Mapping[str, Any]
) -> dict[str, float]:
    """ANLS (headline), exact match and normalised edit distance (`TextSimilarity`), in percent; with several
    instruction tasks in the records, each task's three numbers too (`<task>/anls`, ...)."""
    by_task: dict[str, TextSimilarity] = {}
    overall = TextSimilarity()
    for sample, pred in zip(samples, preds, strict=True):
        overall.update([pred], [sample.target["text"]])
        by_task.setdefault(sample.target["task"], TextSimilarity()).update([pred], [sample.target["text"]])
    stats = overall.compute()
    result = {"score": _percent(stats["anls"]), "exact_match": _percent(stats["exact_match"]),
              "ned": _percent(stats["ned"])}  # fmt: skip
    if len(by_task) > 1:
        for name, metric in sorted(by_task.items()):
            result.update({f"{name}/{key}": _percent(value) for key, value in metric.compute().items()})
    return result


def _annotation_kind(task: str, score: Scorer) -> Kind:
    return Kind(task, score, samples=annotation_samples(task))


CAPTION = Kind("<CAPTION>", caption_score, samples=caption_samples, check_options=check_caption_options)
GROUNDING = _annotation_kind("<CAPTION_TO_PHRASE_GROUNDING>", grounding_score)
REC = _annotation_kind("<REFERRING_EXPRESSION_COMPREHENSION>", rec_score)
RES = _annotation_kind("<REFERRING_EXPRESSION_SEGMENTATION>", res_score)
VQA = Kind("<VQA>", vqa_score, samples=vqa_samples)


# ----------------------------------------------------------------------------------------------- loaders
def coco_detection_samples(annotations: str | os.PathLike, image_dir: str | os.PathLike) -> list[EvalSample]:
    """Every image of a COCO ``instances_*.json`` with COCOeval's ground truth.

    Read here rather than through the ``coco-instances`` converter because that converter makes *training*
    targets: it drops crowd regions and unannotated images, whereas COCOeval keeps crowd regions as
    ignore-regions, takes object sizes from the mask ``area`` and counts false positives on every image.
    """
    with open(annotations, encoding="utf-8") as f:
        coco = json.load(f)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    by_image: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    samples = []
    for image in coco["images"]:
        anns = by_image.get(image["id"], [])
        target = {
            "bboxes": [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)],
            "labels": [names[a["category_id"]] for a in anns],
            "iscrowd": [int(a.get("iscrowd", 0)) for a in anns],
            "area": [float(a.get("area", a["bbox"][2] * a["bbox"][3])) for a in anns],
        }
        path = image_path(image_dir, image["file_name"])
        samples.append(EvalSample(path, (image["width"], image["height"]), None, target, str(image["id"])))
    return samples


DETECTION = Kind("<OD>", detection_score, load=coco_detection_samples, needs_box_scores=True)


def instruction_samples(path: str | os.PathLike) -> list[EvalSample]:
    """One sample per instruction of a record JSONL (what `f2lightning convert` writes; images relative to it);
    the target keeps the instruction's task name for per-task scores. A bad line is an error naming it."""
    return [
        EvalSample(
            record.image, record.image_size, x.prompt, {"text": x.target, "task": x.task}, _key(record, i)
        )
        for record in read_records(path)
        for i, x in enumerate(record.instructions)
    ]


INSTRUCTIONS = Kind("<INSTRUCTION>", instruction_score, load=instruction_samples)


# ----------------------------------------------------------------------------------------------- registry
def _paper(columns: Sequence[str], **rows: Sequence[float | None]) -> dict[str, dict[str, float]]:
    names = {"zb": ZERO_SHOT_B, "zl": ZERO_SHOT_L, "gb": GENERALIST_B, "gl": GENERALIST_L}
    return {
        names[row]: {c: v for c, v in zip(columns, values, strict=True) if v is not None}
        for row, values in rows.items()
    }


_REF = ("val", "test-A", "test-B")
_VQA_NOTE = (
    "test-dev answers are private (EvalAI server); the configs score the public val split instead, and "
    "configs/eval/server/ writes the answers file for the server."
)

BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in [
        Benchmark("coco_caption", "COCO Cap.", "CIDEr", CAPTION,
                  _paper(["test"], zb=[133.0], zl=[135.6], gb=[140.0], gl=[143.3]), "Karpathy test split"),
        Benchmark("nocaps", "NoCaps", "CIDEr", CAPTION,
                  _paper(["val"], zb=[118.7], zl=[120.8], gb=[116.7], gl=[124.9])),
        Benchmark("textcaps", "TextCaps", "CIDEr", CAPTION,
                  _paper(["val"], zb=[70.1], zl=[72.8], gb=[143.9], gl=[151.1])),
        Benchmark("coco_detection", "COCO Det.", "mAP", DETECTION,
                  _paper(["val2017"], zb=[34.7], zl=[37.5], gb=[41.4], gl=[43.4])),
        Benchmark("flickr30k", "Flickr30k", "R@1", GROUNDING,
                  _paper(["test"], zb=[83.6], zl=[84.4], gb=[84.0], gl=[85.2])),
        Benchmark("refcoco", "RefCOCO", "Accuracy", REC,
                  _paper(_REF, zb=[53.9, 58.4, 49.7], zl=[56.3, 61.6, 51.4], gb=[92.6, 94.8, 91.5],
                         gl=[93.4, 95.3, 92.0])),
        Benchmark("refcoco_plus", "RefCOCO+", "Accuracy", REC,
                  _paper(_REF, zb=[51.5, 56.4, 47.9], zl=[53.6, 57.9, 49.9], gb=[86.8, 91.7, 82.2],
                         gl=[88.3, 92.9, 83.6])),
        # Table 6 prints 82.2 for Florence-2-B on RefCOCOg test (below its 89.8 on val); copied as printed.
        Benchmark("refcocog", "RefCOCOg", "Accuracy", REC,
                  _paper(["val", "test"], zb=[66.3, 65.1], zl=[68.0, 67.0], gb=[89.8, 82.2], gl=[91.2, 91.7])),
        Benchmark("refcoco_res", "RefCOCO RES", "mIoU", RES,
                  _paper(["val"], zb=[34.6], zl=[35.8], gb=[78.0], gl=[80.5])),
        Benchmark("vqav2", "VQAv2", "Acc", VQA, _paper(["test-dev"], gb=[79.7], gl=[81.7]), _VQA_NOTE),
        Benchmark("textvqa", "TextVQA", "Acc", VQA, _paper(["test-dev"], gb=[63.6], gl=[73.5]), _VQA_NOTE),
        Benchmark("vizwiz", "VizWiz VQA", "Acc", VQA, _paper(["test-dev"], gb=[63.6], gl=[72.6]), _VQA_NOTE),
        Benchmark("instructions", "Instructions", "ANLS", INSTRUCTIONS,
                  note="the free-form instructions of your records; not in the paper"),
    ]
}  # fmt: skip


def get_benchmark(name: str) -> Benchmark:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}") from None
