"""Metrics against independent references: pycocoevalcap scorers, pycocotools COCOeval, hand-computed values."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import socket
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from f2lightning.evaluation import (
    BLEU,
    CIDEr,
    DetectionMAP,
    OCRMetrics,
    PhraseGroundingRecall,
    RECAccuracy,
    ReferringSegmentationIoU,
    VQAAccuracy,
    coco_caption_tokenize,
    normalize_vqa_answer,
    ptb_tokenize,
    vqa_accuracy,
)
from f2lightning.evaluation import caption as caption_module
from f2lightning.inference.scores import box_scores_from_logprobs

# ------------------------------------------------------------------------------------------------ fixtures

CAPTIONS = [
    (
        "A man riding a horse on the beach.",
        ["A man rides a horse.", "a person on a horse at the beach", "Horse riding!"],
    ),
    (
        "two dogs play in the grass",
        ["Two dogs playing on grass.", "dogs in a field", "two brown dogs running"],
    ),
    ("a plate of food", ["A plate with food on it.", "food on a white plate", "a dish of pasta"]),
    ("a cat sleeping", ["A cat is sleeping on a couch.", "the cat sleeps", "a kitten asleep on the sofa"]),
    ("", ["an empty caption still counts", "reference"]),
]


def detection_data(seed: int = 0, num_images: int = 6) -> tuple[list[dict], list[dict]]:
    """Random images with several classes, a crowd box, and jittered / spurious scored predictions."""
    rng = np.random.default_rng(seed)
    names = ["cat", "dog", "person"]
    preds, targets = [], []
    for i in range(num_images):
        gt_boxes, gt_labels, crowd = [], [], []
        for _ in range(rng.integers(1, 5)):
            x0, y0 = rng.uniform(0, 300, 2)
            w, h = rng.uniform(5, 150, 2)
            gt_boxes.append([x0, y0, x0 + w, y0 + h])
            gt_labels.append(names[rng.integers(3)])
            crowd.append(int(i == 0 and not crowd))
        boxes, labels, scores = [], [], []
        for box, label in zip(gt_boxes, gt_labels):
            jitter = rng.normal(0, 8, 4)
            boxes.append([a + b for a, b in zip(box, jitter)])
            labels.append(label if rng.uniform() < 0.8 else names[rng.integers(3)])
            scores.append(float(rng.uniform()))
        for _ in range(rng.integers(0, 3)):
            x0, y0 = rng.uniform(0, 300, 2)
            boxes.append([x0, y0, x0 + 40, y0 + 30])
            labels.append(names[rng.integers(3)])
            scores.append(float(rng.uniform()))
        preds.append({"bboxes": boxes, "labels": labels, "scores": scores})
        targets.append({"bboxes": gt_boxes, "labels": gt_labels, "iscrowd": crowd})
    return preds, targets


def coco_reference(preds: list[dict], targets: list[dict]) -> list[float]:
    """COCOeval run directly on hand-built COCO json (arbitrary image ids, unsorted category ids)."""
    category = {"person": 7, "cat": 3, "dog": 11}
    image_ids = [100 + 7 * i for i in range(len(targets))]
    annotations, results = [], []
    for image_id, pred, target in zip(image_ids, preds, targets):
        for k, ((x0, y0, x1, y1), label) in enumerate(zip(target["bboxes"], target["labels"])):
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": category[label],
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                "iscrowd": target.get("iscrowd", [0] * len(target["labels"]))[k],
            })  # fmt: skip
        for (x0, y0, x1, y1), label, score in zip(pred["bboxes"], pred["labels"], pred["scores"]):
            results.append({
                "image_id": image_id, "category_id": category[label], "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score,
            })  # fmt: skip
    gt_json = {
        "images": [{"id": i, "width": 500, "height": 500} for i in image_ids],
        "categories": [{"id": i, "name": n} for n, i in category.items()],
        "annotations": annotations,
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = json.loads(json.dumps(gt_json))
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(json.loads(json.dumps(results))), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(v) for v in evaluator.stats]


def pycocoevalcap_scores(
    captions: list[tuple[str, list[str]]], tokenized: tuple[dict, dict] | None = None
) -> tuple[float, list[float]]:
    """coco-caption's scorers on `tokenized` `(gts, res)` (default: our Python tokenisation)."""
    gts, res = tokenized or (
        {i: [coco_caption_tokenize(r) for r in refs] for i, (_, refs) in enumerate(captions)},
        {i: [coco_caption_tokenize(pred)] for i, (pred, _) in enumerate(captions)},
    )
    cider, _ = Cider().compute_score(gts, res)
    with contextlib.redirect_stdout(io.StringIO()):
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return float(cider), [float(b) for b in bleu]


def caption_scores(
    captions: list[tuple[str, list[str]]], tokenizer: str = "python"
) -> tuple[float, list[float]]:
    cider, bleu = CIDEr(tokenizer=tokenizer), BLEU(tokenizer=tokenizer)
    for metric in (cider, bleu):
        metric.update([p for p, _ in captions], [r for _, r in captions])
    bleu_scores = bleu.compute()
    return cider.compute()["cider"], [bleu_scores[f"bleu_{k}"] for k in range(1, 5)]


# ------------------------------------------------------------------------------------------------ captions


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("A dog's toy, isn't it?", "a dog 's toy is n't it"),
        ("Black-and-white photo of a 3.5 m (tall) man...", "black-and-white photo of a 3.5 m tall man"),
        ('He said: "Hi!"  -- then left;', "he said hi then left"),
        ("Fish & chips", "fish & chips"),
    ],
)
def test_coco_caption_tokenize(text: str, tokens: str) -> None:
    assert coco_caption_tokenize(text) == tokens


def test_caption_metrics_equal_pycocoevalcap() -> None:
    cider, bleu = caption_scores(CAPTIONS)
    ref_cider, ref_bleu = pycocoevalcap_scores(CAPTIONS)
    assert cider == pytest.approx(ref_cider, abs=1e-6)
    assert bleu == pytest.approx(ref_bleu, abs=1e-6)
    assert cider > 0.1


# Where the Python approximation and PTB part ways (abbreviations, brackets, slashes, quotes, "cannot").
TRICKY_CAPTIONS = [
    ('A sign reads "STOP" (in red).', ["A red sign says STOP.", "a (red) stop sign"]),
    ("The U.S. flag at 3:30 p.m.", ["A U.S. flag flies.", "flag of the U.S.A. at noon"]),
    ("It's 5 o'clock; they're gonna go.", ["It is five o'clock.", "They can't wait, they cannot go."]),
    (
        "A man/woman by an 18-wheeler & a car.",
        ["A truck & a car at 100 km/h.", "'Quoted' words: rock'n'roll"],
    ),
    ("A café in Zürich, e.g. near Mr. Smith's house.", ["A café by the lake.", "Mr. Smith's café"]),
]
needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="coco-caption's PTBTokenizer needs Java")


@needs_java
def test_ptb_tokenize_is_coco_captions_tokenizer() -> None:
    texts = [text for pred, refs in TRICKY_CAPTIONS for text in (pred, *refs)]
    with contextlib.redirect_stdout(io.StringIO()):  # it prints nothing, but writes beside its jar
        reference = PTBTokenizer().tokenize({i: [{"caption": t}] for i, t in enumerate(texts)})
    ours = ptb_tokenize(texts)
    assert ours == [reference[i][0] for i in range(len(texts))]
    assert ours != [coco_caption_tokenize(t) for t in texts]  # the corpus does tell the tokenizers apart
    # One output per text, always: whatever Java takes for a line break stays inside its text.
    assert ptb_tokenize(["", "two\nlines", "a\u2028b\x0cc\rd"]) == ["", "two lines", "a b c d"]


@needs_java
def test_caption_metrics_with_ptb_equal_the_coco_caption_pipeline() -> None:
    """PTBTokenizer on references and predictions, then Cider / Bleu(4): how coco-caption scores."""
    gts = {i: [{"caption": r} for r in refs] for i, (_, refs) in enumerate(TRICKY_CAPTIONS)}
    res = {i: [{"caption": pred}] for i, (pred, _) in enumerate(TRICKY_CAPTIONS)}
    with contextlib.redirect_stdout(io.StringIO()):
        tokenized = PTBTokenizer().tokenize(gts), PTBTokenizer().tokenize(res)
    cider, bleu = caption_scores(TRICKY_CAPTIONS, tokenizer="ptb")
    ref_cider, ref_bleu = pycocoevalcap_scores(TRICKY_CAPTIONS, tokenized)
    assert cider == pytest.approx(ref_cider, abs=1e-6) and bleu == pytest.approx(ref_bleu, abs=1e-6)
    assert caption_scores(TRICKY_CAPTIONS, tokenizer="python") != (cider, bleu)


def test_without_java_auto_falls_back_with_a_warning_and_ptb_refuses(monkeypatch) -> None:
    monkeypatch.setattr(caption_module.shutil, "which", lambda name: None)
    with pytest.warns(UserWarning, match="install Java.*Python approximation"):
        assert CIDEr(tokenizer="auto").tokenizer == "python"
    with pytest.raises(RuntimeError, match="install Java"):
        BLEU(tokenizer="ptb")
    with pytest.raises(ValueError, match="auto, ptb or python, got 'java'"):
        CIDEr(tokenizer="java")


_WORDS = st.sampled_from(["a", "dog", "cat", "runs", "on", "the", "grass", "red", "ball"])
_HYPOTHESIS = st.lists(_WORDS, min_size=0, max_size=9).map(" ".join)
# pycocoevalcap's CIDEr crashes on a corpus whose references are all empty.
_REFERENCE = st.lists(_WORDS, min_size=1, max_size=9).map(" ".join)
_CORPUS = st.lists(
    st.tuples(_HYPOTHESIS, st.lists(_REFERENCE, min_size=1, max_size=4)), min_size=1, max_size=6
)


@settings(max_examples=40, deadline=None)
@given(_CORPUS)
def test_caption_metrics_equal_pycocoevalcap_random(captions: list[tuple[str, list[str]]]) -> None:
    cider, bleu = caption_scores(captions)
    ref_cider, ref_bleu = pycocoevalcap_scores(captions)
    assert cider == pytest.approx(ref_cider, abs=1e-6)
    assert bleu == pytest.approx(ref_bleu, abs=1e-6)


# ------------------------------------------------------------------------------------------------ detection


def test_detection_map_equals_cocoeval() -> None:
    preds, targets = detection_data()
    metric = DetectionMAP()
    metric.update(preds[:4], targets[:4])
    metric.update(preds[4:], targets[4:])
    result = metric.compute()
    assert list(result.values()) == pytest.approx(coco_reference(preds, targets), abs=1e-6)
    assert 0 < result["map"] < 1


def test_detection_scores_change_ranking_and_ap() -> None:
    target = {"bboxes": [[0, 0, 100, 100], [200, 200, 260, 260]], "labels": ["cat", "cat"]}
    boxes = [[0, 0, 100, 100], [300, 0, 350, 50], [200, 200, 260, 260]]  # hit, miss, hit
    results = []
    for scores in ([0.9, 0.8, 0.7], [0.9, 0.6, 0.7]):  # the false positive ranked 2nd, then 3rd
        pred = {"bboxes": torch.tensor(boxes, dtype=torch.float64), "labels": ["cat"] * 3, "scores": scores}
        metric = DetectionMAP()
        metric.update([pred], [target])
        results.append(metric.compute())
        reference = coco_reference([{**pred, "bboxes": boxes}], [target])
        assert list(results[-1].values()) == pytest.approx(reference, abs=1e-6)
    assert results[1]["map"] == pytest.approx(1.0)
    assert results[0]["map"] < results[1]["map"]


def test_detection_without_predictions() -> None:
    metric = DetectionMAP()
    metric.update(
        [{"bboxes": [], "labels": [], "scores": []}], [{"bboxes": [[0, 0, 10, 10]], "labels": ["cat"]}]
    )
    assert metric.compute()["map"] == 0.0


def test_detection_requires_scores() -> None:
    with pytest.raises(ValueError, match="scores"):
        DetectionMAP().update([{"bboxes": [], "labels": []}], [{"bboxes": [], "labels": []}])


# ------------------------------------------------------------------------------------------------ grounding


def test_phrase_grounding_any_vs_merged() -> None:
    # "two men": GT boxes side by side; the prediction covers only the left man.
    # "a dog": predicted first with a wrong box, then a right one (only the first counts).
    # "a ball": never predicted.
    target = {
        "bboxes": [[0, 0, 50, 100], [60, 0, 110, 100], [200, 200, 240, 240], [300, 300, 310, 310]],
        "labels": ["two men", "two men", "a dog", "a ball"],
    }
    pred = {
        "bboxes": [[0, 0, 50, 100], [0, 200, 40, 240], [200, 200, 240, 240]],
        "labels": ["Two  men", "a dog", "a dog"],
    }
    any_box, merged = PhraseGroundingRecall("any"), PhraseGroundingRecall("merged")
    for metric in (any_box, merged):
        metric.update([pred], [target])
    assert any_box.compute()["recall_at_1"].item() == pytest.approx(1 / 3)
    # IoU with the union box [0, 0, 110, 100] is 50/110 < 0.5.
    assert merged.compute()["recall_at_1"].item() == pytest.approx(0.0)


def test_rec_accuracy() -> None:
    metric = RECAccuracy()
    gt = {"bboxes": [[0, 0, 100, 100]]}
    metric.update(
        [
            {"bboxes": [[0, 0, 100, 50]]},  # IoU 0.5 exactly: correct
            {"bboxes": [[0, 0, 100, 49]]},  # just below
            {"bboxes": [[500, 500, 600, 600], [0, 0, 100, 100]]},  # only the first box counts
            {"bboxes": []},
        ],
        [gt] * 4,
    )
    assert metric.compute()["accuracy"].item() == pytest.approx(0.25)


# ------------------------------------------------------------------------------------------------ RES


def _mask(polygons: list[list[list[float]]], width: int, height: int) -> np.ndarray:
    flat = [p for obj in polygons for p in obj]
    if not flat:
        return np.zeros((height, width), dtype=bool)
    return mask_utils.decode(mask_utils.frPyObjects(flat, height, width)).any(axis=2)


def test_res_miou_and_oiou() -> None:
    samples = [
        (
            {"polygons": [[[2, 2, 30, 2, 30, 20, 2, 20]]]},
            {"polygons": [[[10, 5, 40, 5, 40, 25, 10, 25]]]},
            (50, 40),
        ),
        (  # two objects, one with two parts; the prediction holds a degenerate 2-point polygon
            {"polygons": [[[0, 0, 10, 0, 10, 10]], [[20, 20, 60, 20, 60, 60, 20, 60], [1, 1, 2, 2]]]},
            {"polygons": [[[0, 0, 12, 0, 0, 12]], [[20, 20, 60, 20, 60, 60, 20, 60]]]},
            (80, 70),
        ),
        ({"polygons": []}, {"polygons": [[[5, 5, 15, 5, 15, 15, 5, 15]]]}, (20, 20)),
        ({"polygons": []}, {"polygons": []}, (20, 20)),  # both empty: IoU 1
    ]
    metric = ReferringSegmentationIoU()
    metric.update([s[0] for s in samples], [s[1] for s in samples], [s[2] for s in samples])
    result = metric.compute()
    ious, inters, unions = [], [], []
    for pred, target, (w, h) in samples:
        p = _mask([[q for q in obj if len(q) >= 6] for obj in pred["polygons"]], w, h)
        g = _mask(target["polygons"], w, h)
        inters.append((p & g).sum())
        unions.append((p | g).sum())
        ious.append(inters[-1] / unions[-1] if unions[-1] else 1.0)
    assert result["miou"].item() == pytest.approx(np.mean(ious), abs=1e-9)
    assert result["oiou"].item() == pytest.approx(sum(inters) / sum(unions), abs=1e-9)
    assert 0 < ious[0] < 1 and ious[2] == 0 and ious[3] == 1


# ------------------------------------------------------------------------------------------------ VQA


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("Two", "2"),
        ("dont", "don't"),
        ("a dog.", "dog"),
        ("The  Dogs!", "dogs"),
        ("1,000", "1000"),
        ("3.5", "3.5"),
        ("yes, it is", "yes it is"),
        ("black/white", "black white"),
        ("none", "0"),
    ],
)
def test_normalize_vqa_answer(raw: str, normalized: str) -> None:
    assert normalize_vqa_answer(raw) == normalized


@pytest.mark.parametrize(
    ("matches", "accuracy"),
    # Leave-one-out over 10 humans: (#non-matching * min(1, m/3) + m * min(1, (m-1)/3)) / 10.
    [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)],
)
def test_vqa_soft_accuracy(matches: int, accuracy: float) -> None:
    answers = ["2"] * matches + ["3"] * (10 - matches)
    assert vqa_accuracy("2", answers) == pytest.approx(accuracy, abs=1e-12)


# The table of docs/evaluation.md. Scores (x100) are those of the official vqaEval.py at GT-Vision-Lab/VQA
# a013f00 ("Fixed processing answers bug"), run on these questions (ten answer records with distinct
# answer_ids each); by hand: humans disagree -> both sides fully normalised, all agree -> compared as stripped.
VQA_OFFICIAL_CASES = [
    ("none", ["none"] * 10, 100.0),  # all agree: compared as is
    ("none", ["none"] * 6 + ["no"] * 4, 100.0),  # both sides become "0"
    ("Yes.", ["yes"] * 10, 0.0),  # all agree: the prediction is not normalised
    (" yes\n", ["yes"] * 10, 100.0),  # only stripped
    ("Yes.", ["yes"] * 9 + ["no"], 100.0),  # disagree: "Yes." -> "yes"
    ("2", ["two"] * 10, 0.0),  # all agree: "two" stays a word
    ("2", ["two"] * 2 + ["2"] + ["3"] * 7, 90.0),  # "two" -> "2": 3 matches
    ("Two", ["2"] * 2 + ["3"] * 8, 60.0),
    ("the dog", ["a dog"] * 3 + ["dog"] * 3 + ["cat"] * 4, 100.0),  # articles dropped: 6 matches
    ("dont know", ["dont know"] * 2 + ["don't know"] * 2 + ["no"] * 6, 100.0),  # contraction: 4 matches
    ("black/white", ["black/white"] * 2 + ["black and white"] * 2 + ["gray"] * 6, 60.0),  # "/" -> " "
    ("1000", ["1,000"] * 3 + ["1000"] * 3 + ["100"] * 4, 100.0),  # digit,digit: punctuation dropped
    ("1.5", ["1.5"] * 4 + ["2"] * 6, 100.0),  # a decimal point stays
    ("yes!", ["yes"] * 5 + ["yes!"] * 5, 100.0),
    ("Red", ["red"] * 3 + ["blue"] * 7, 90.0),
    ("Red", ["red"] * 10, 0.0),  # all agree: case matters
]


@pytest.mark.parametrize(("prediction", "answers", "score"), VQA_OFFICIAL_CASES)
def test_vqa_accuracy_matches_the_official_script(prediction: str, answers: list[str], score: float) -> None:
    assert round(100 * vqa_accuracy(prediction, answers), 2) == score


def test_vqa_always_normalised_references() -> None:
    # TextVQA / VizWiz configs normalise both sides even when the humans agree.
    assert vqa_accuracy("Yes.", ["yes"] * 10, normalize_references=True) == 1.0
    assert vqa_accuracy("2", ["two"] * 10, normalize_references=True) == 1.0
    with pytest.raises(ValueError, match="human answer"):
        vqa_accuracy("yes", [])

    metric = VQAAccuracy()
    metric.update(["Two", "dog"], [["2", "2"] + ["3"] * 8, ["dog"] * 10])
    assert metric.compute()["accuracy"].item() == pytest.approx(0.8)


# ------------------------------------------------------------------------------------------------ OCR


def test_ocr_metrics() -> None:
    metric = OCRMetrics()
    metric.update(
        ["hello  world\n", "the quick brown fox", "abc", ""],
        ["hello world", "the quick brown dog", "xyz", ""],
    )
    result = {k: v.item() for k, v in metric.compute().items()}
    assert result["exact_match"] == pytest.approx(2 / 4)
    # word edits: 0 + 1 + 1 + 0 over 2 + 4 + 1 + 0 reference words.
    assert result["word_accuracy"] == pytest.approx(1 - 2 / 7)
    # NED: 0, 2/19 ("dog" vs "fox": two substitutions), 1, 0.
    assert result["ned"] == pytest.approx((2 / 19 + 1) / 4)
    assert result["anls"] == pytest.approx((1 + (1 - 2 / 19) + 0 + 1) / 4)
    insensitive = OCRMetrics(case_sensitive=False)
    insensitive.update(["Hello"], ["hello"])
    assert insensitive.compute()["exact_match"].item() == 1.0


# ------------------------------------------------------------------------------------------------ box scores

LOC = set(range(100, 110))  # stand-ins for <loc_*> ids
EOS = 2


def test_box_scores_groups_tokens() -> None:
    #        "cat"  <loc>x4                 "a man"  <loc>x4   <loc>x4  <loc>x2 (incomplete)  EOS
    ids = [5, 100, 101, 102, 103, 6, 7, 104, 105, 106, 107, 100, 100, 100, 100, 101, 101, EOS]
    lps = [
        -1.0,
        -0.1,
        -0.1,
        -0.1,
        -0.1,
        -2.0,
        -2.0,
        -0.5,
        -0.5,
        -0.5,
        -0.5,
        -0.2,
        -0.2,
        -0.2,
        -0.2,
        -9,
        -9,
        -50,
    ]
    scores = box_scores_from_logprobs(torch.tensor(lps), torch.tensor(ids), LOC, ignore_token_ids={EOS})
    assert scores == pytest.approx([math.exp(-1.4 / 5), math.exp(-6.0 / 6), math.exp(-4.8 / 6)])
    only_locs = box_scores_from_logprobs(lps, ids, LOC, include_label_tokens=False, ignore_token_ids={EOS})
    assert only_locs == pytest.approx([math.exp(-0.1), math.exp(-0.5), math.exp(-0.2)])


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(-10, 0), min_size=5, max_size=5),
    st.integers(0, 4),
    st.floats(0.01, 5),
)
def test_box_scores_monotonic(logprobs: list[float], position: int, drop: float) -> None:
    ids = [5, 100, 101, 102, 103]
    base = box_scores_from_logprobs(logprobs, ids, LOC)[0]
    worse = list(logprobs)
    worse[position] -= drop
    assert box_scores_from_logprobs(worse, ids, LOC)[0] < base
    assert 0 < base <= 1


# ------------------------------------------------------------------------------------------------ DDP


def _all_metrics() -> dict[str, object]:
    return {
        "cider": CIDEr(),
        "bleu": BLEU(),
        "map": DetectionMAP(),
        "map_rank0_only": DetectionMAP(),
        "vqa": VQAAccuracy(),
        "ocr": OCRMetrics(),
        "rec": RECAccuracy(),
    }


def _update_all(metrics: dict, captions: list, detections: tuple, rank0_detections: tuple | None) -> None:
    metrics["cider"].update([p for p, _ in captions], [r for _, r in captions])
    metrics["bleu"].update([p for p, _ in captions], [r for _, r in captions])
    metrics["map"].update(*detections)
    if rank0_detections is not None:
        metrics["map_rank0_only"].update(*rank0_detections)
    vqa_preds = [p for p, _ in captions]
    metrics["vqa"].update(vqa_preds, [r * 3 for _, r in captions])
    metrics["ocr"].update(vqa_preds, [r[0] for _, r in captions])
    boxes = [{"bboxes": b["bboxes"][:1]} for b in detections[0]]
    metrics["rec"].update(boxes, [{"bboxes": t["bboxes"][:1]} for t in detections[1]])


def _results(metrics: dict) -> dict[str, dict[str, float]]:
    return {name: {k: float(v) for k, v in m.compute().items()} for name, m in metrics.items()}


def _ddp_worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        preds, targets = detection_data()
        # Uneven shards; 'map_rank0_only' gets nothing on rank 1 (an empty list state must still sync).
        shard = slice(0, 3) if rank == 0 else slice(3, None)
        metrics = _all_metrics()
        _update_all(
            metrics,
            CAPTIONS[shard],
            (preds[shard], targets[shard]),
            (preds, targets) if rank == 0 else None,
        )
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(_results(metrics), f)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_sync_equals_single_process(tmp_path) -> None:
    preds, targets = detection_data()
    single = _all_metrics()
    _update_all(single, CAPTIONS, (preds, targets), (preds, targets))
    expected = _results(single)

    # fork, not spawn: children inherit the imported modules instead of re-importing torch and torchmetrics
    # (~10 s each on a loaded 2-core machine); they use only tiny CPU tensors and gloo.
    context = mp.start_processes(
        _ddp_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=False, start_method="fork"
    )
    deadline = time.monotonic() + 180
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("DDP workers did not finish")
    for rank in range(2):
        synced = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert synced.keys() == expected.keys()
        for name, values in expected.items():
            assert synced[name] == pytest.approx(values, abs=1e-9, nan_ok=True), name


def test_image_blind_prior_answers_the_most_frequent_training_target_of_each_prompt() -> None:
    from f2lightning.data.expand import Sample
    from f2lightning.training.quality import image_blind_prior

    def sample(task: str, prompt: str, target: str) -> Sample:
        return Sample("x.png", task, prompt, target, (100, 100))

    train = {
        "<VQA>": [sample("<VQA>", "What color?", "red")] * 2
        + [sample("<VQA>", "What color?", "blue"), sample("<VQA>", "How many?", "2")],
        "<OD>": [sample("<OD>", "Locate the objects.", "circle<loc_0><loc_0><loc_499><loc_499>")] * 3
        + [sample("<OD>", "Locate the objects.", "square<loc_500><loc_500><loc_999><loc_999>")],
    }
    val = {
        # "What color?" -> red (right once, wrong once); "How many?" -> 2 (right); a prompt never seen in training
        # -> the task's most frequent answer, red (wrong).
        "<VQA>": [
            sample("<VQA>", "What color?", "red"),
            sample("<VQA>", "What color?", "blue"),
            sample("<VQA>", "How many?", "2"),
            sample("<VQA>", "What shape?", "circle"),
        ],
        "<OD>": [
            sample("<OD>", "Locate the objects.", "circle<loc_0><loc_0><loc_499><loc_499>"),
            sample("<OD>", "Locate the objects.", "square<loc_500><loc_500><loc_999><loc_999>"),
        ],
    }
    prior = image_blind_prior(train, val)
    assert prior["VQA/exact_match"] == pytest.approx(0.5)
    assert prior["OD/box_recall@0.5"] == pytest.approx(0.5)
