"""The data engine's filters (paper §4.2.2): spaCy text analysis and text filter on hand-parsed sentences, NMS
equal to torchvision's, human annotations untouched, blacklist, scores, and `f2lightning filter` end to end.

spaCy's English pipeline is not on PyPI and cannot be downloaded here, so the sentences are real spaCy `Doc`s
whose words, part-of-speech tags, heads and dependency labels are written below the way en_core_web_sm parses
them (Universal POS, Penn tags, ClearNLP labels).
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from spacy.tokens import Doc
from torchvision.ops import batched_nms, box_iou

from f2lightning.cli import main
from f2lightning.data.records import read_records, write_records
from f2lightning.data.schema import Grounding, Phrase, Record, Region, SourcedText
from f2lightning.data.skips import SkipReport
from f2lightning.engine.filters import RegionFilter, TextFilter, filter_records
from f2lightning.engine.text_analysis import EngineDependencyError, analyze, load_pipeline, node_degree
from tests.helpers.spacy_docs import CROWDED, SENTENCES, VOCAB

MISSING_PIPELINE = "f2l_no_such_pipeline"


def parse(text: str) -> Doc:
    return SENTENCES[text]


def test_the_hand_parsed_sentences_are_what_they_say():
    assert CROWDED in SENTENCES
    for doc in SENTENCES.values():
        assert doc.has_annotation("DEP") and doc.has_annotation("POS")
        assert sum(token.head.i == token.i for token in doc) == 1  # one tree per sentence


@pytest.mark.parametrize(
    ("text", "objects", "attributes", "actions", "object_degrees", "action_degrees"),
    [
        ("A dog.", ("dog",), (), (), (1,), ()),
        # dog: A, brown, head runs; runs (root): dog, on; grass: the, head on
        ("A brown dog runs on the grass.", ("dog", "grass"), ("brown",), ("runs",), (3, 2), (2,)),
        ("It is sitting.", (), (), ("sitting",), (), (2,)),  # a pronoun is no object; "is" is AUX, no action
        ("A man riding a horse.", ("man", "horse"), (), ("riding",), (2, 2), (2,)),
        ("Two people are playing tennis on a court.", ("people", "tennis", "court"), (), ("playing",),
         (2, 1, 2), (4,)),
        ("A red car and a white truck.", ("car", "truck"), ("red", "white"), (), (4, 3), ()),
        ("The car is red.", ("car",), ("red",), (), (2,), ()),  # a predicate adjective of its subject
        ("They are here.", (), (), (), (), ()),
        (CROWDED, ("table", "cup", "plate", "fork", "knife", "spoon", "bowl", "glass", "bottle", "napkin",
                   "vase", "candle"), (), (), (2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 4, 2), ()),  # vase: a, and, candle
    ],
)  # fmt: skip
def test_analysis_of_hand_parsed_sentences(
    text, objects, attributes, actions, object_degrees, action_degrees
):
    analysis = analyze(SENTENCES[text])
    assert analysis.objects == objects
    assert analysis.attributes == attributes
    assert analysis.actions == actions
    assert analysis.object_degrees == object_degrees
    assert analysis.action_degrees == action_degrees


def test_node_degree_counts_children_and_the_head_link_but_not_punctuation():
    doc = SENTENCES["A brown dog runs on the grass."]
    assert [node_degree(token) for token in doc] == [1, 1, 3, 2, 2, 1, 2, 1]


def test_analysis_needs_a_dependency_parse():
    with pytest.raises(ValueError, match="no dependency parse"):
        analyze(Doc(VOCAB, words=["A", "dog"]))


@pytest.mark.parametrize(
    ("text", "granularity", "verdict"),
    [
        ("A dog.", "brief", "text_low_complexity"),  # its only object has degree 1
        ("A brown dog runs on the grass.", "brief", None),
        ("It is sitting.", "brief", "text_no_object"),
        ("A man riding a horse.", "brief", None),
        ("Two people are playing tennis on a court.", "brief", None),
        ("A red car and a white truck.", "brief", None),
        ("The car is red.", "brief", None),
        ("The cat sleeps.", "brief", None),
        ("They are here.", "brief", "text_no_object"),
        (CROWDED, "brief", "text_too_many_objects"),  # 12 objects, the brief limit is 10
        (CROWDED, "detailed", None),  # a detailed text may name 25
    ],
)
def test_text_filter_verdicts_with_the_defaults(text, granularity, verdict):
    rejected = TextFilter().rejection(analyze(SENTENCES[text]), granularity)
    assert (rejected and rejected[0]) == verdict


def test_text_filter_thresholds_are_options():
    strict = TextFilter(min_complexity=3, max_objects=2)
    assert strict.rejection(analyze(SENTENCES["The cat sleeps."]), "brief")[0] == "text_low_complexity"
    assert strict.rejection(analyze(SENTENCES["A brown dog runs on the grass."]), "brief") is None
    crowded = strict.rejection(analyze(SENTENCES["Two people are playing tennis on a court."]), "brief")
    assert crowded == ("text_too_many_objects", "names 3 objects (max 2)")


def generated(text: str) -> SourcedText:
    return SourcedText(text, source="captioner", score=0.9)


def test_filter_records_drops_generated_texts_and_keeps_human_ones():
    record = Record(
        image="img/1.png",
        width=100,
        height=100,
        texts={
            "brief": [
                generated("A dog."),
                "A dog.",
                generated("The cat sleeps."),
                generated("It is sitting."),
            ],
            "detailed": [generated(CROWDED)],
        },
        groundings=[
            Grounding("A dog.", [Phrase((0, 5), [[0, 0, 10, 10]])], source="grounder", score=0.9),
            Grounding("A dog.", [Phrase((0, 5), [[0, 0, 10, 10]])]),  # human
        ],
    )
    report = SkipReport()
    (out,) = filter_records([record], TextFilter(parse=parse), None, report)
    assert out.texts == {"brief": ["A dog.", "The cat sleeps."], "detailed": [CROWDED]}
    assert [type(t) for t in out.texts["brief"]] == [str, SourcedText]  # the human one is what survived
    assert out.groundings == [record.groundings[1]]
    assert dict(report.dropped) == {"text_low_complexity": 2, "text_no_object": 1}
    assert report.examples["text_no_object"] == ["img/1.png: texts.brief 'It is sitting.' names no object"]
    assert report.examples["text_low_complexity"][1].startswith("img/1.png: groundings[0] 'A dog.'")
    assert len(record.texts["brief"]) == 4 and len(record.groundings) == 2  # the input is unchanged

    report = SkipReport()
    (out,) = filter_records([record], TextFilter(parse=parse, include_human=True), None, report)
    assert out.texts["brief"] == ["The cat sleeps."] and out.groundings == []
    assert report.dropped["text_low_complexity"] == 4


def test_text_filter_without_the_pipeline_says_how_to_install_it(monkeypatch):
    record = Record(image="a.png", width=10, height=10, texts={"brief": [generated("A dog.")]})
    with pytest.raises(EngineDependencyError, match=f"python -m spacy download {MISSING_PIPELINE}"):
        filter_records([record], TextFilter(spacy_model=MISSING_PIPELINE), None, SkipReport())
    monkeypatch.setitem(sys.modules, "spacy", None)  # spaCy itself absent
    with pytest.raises(ImportError, match=r'pip install "f2lightning\[engine\]"'):
        load_pipeline(MISSING_PIPELINE)


# -- regions -------------------------------------------------------------------------------------------------

LABELS = ("dog", "cat", "car")


@st.composite
def boxes(draw, side: int = 100) -> list[float]:
    """Whole-pixel boxes: their IoUs are the same however batched_nms offsets each label's boxes."""
    x0 = draw(st.integers(0, side - 1))
    y0 = draw(st.integers(0, side - 1))
    return [
        float(x0),
        float(y0),
        float(draw(st.integers(x0 + 1, side))),
        float(draw(st.integers(y0 + 1, side))),
    ]


def region(
    box: list[float], label: str, score: float | None = None, source: str | None = "detector"
) -> Region:
    return Region(box=box, category=label, score=score, source=source)


def region_sets(human: bool):
    made = st.tuples(boxes(), st.sampled_from(LABELS), st.floats(0, 1))
    return st.tuples(
        st.lists(made, max_size=25),
        st.lists(st.tuples(boxes(), st.sampled_from(LABELS)), max_size=6 if human else 0),
        st.sampled_from([0.3, 0.5, 0.7]),
    )


def label_ids(regions: list[Region]) -> torch.Tensor:
    return torch.tensor([LABELS.index(r.category) for r in regions])


@settings(max_examples=60, deadline=None)
@given(region_sets(human=False))
def test_nms_keeps_what_torchvision_batched_nms_keeps(case):
    made, _, iou = case
    regions = [region(box, label, score) for box, label, score in made]
    record = Record(image="a.png", width=100, height=100, regions=regions)
    report = SkipReport()
    (out,) = filter_records(
        [record], None, RegionFilter(min_score=0, nms_iou=iou, blacklist=frozenset()), report
    )
    if regions:
        keep = batched_nms(
            torch.tensor([r.box for r in regions], dtype=torch.float64),
            torch.tensor([r.score for r in regions], dtype=torch.float64),
            label_ids(regions),
            iou,
        )
        expected = [regions[i] for i in sorted(keep.tolist())]
    else:
        expected = []
    assert out.regions == expected
    assert report.total == report.dropped["region_nms"] == len(regions) - len(expected)


@settings(max_examples=60, deadline=None)
@given(region_sets(human=True))
def test_human_regions_survive_and_generated_duplicates_of_them_go(case):
    made, human_made, iou = case
    generated_regions = [region(box, label, score) for box, label, score in made]
    human = [region(box, label, source=None) for box, label in human_made]
    record = Record(image="a.png", width=100, height=100, regions=[*human, *generated_regions])
    report = SkipReport()
    (out,) = filter_records([record], None, RegionFilter(min_score=0, nms_iou=iou), report)
    assert out.regions[: len(human)] == human
    duplicates = []
    if human and generated_regions:
        overlap = box_iou(
            torch.tensor([r.box for r in generated_regions], dtype=torch.float64),
            torch.tensor([r.box for r in human], dtype=torch.float64),
        )
        same = label_ids(generated_regions)[:, None] == label_ids(human)[None, :]
        duplicates = ((overlap > iou) & same).any(dim=1).tolist()
    rest = [r for n, r in enumerate(generated_regions) if not (duplicates and duplicates[n])]
    expected = []
    if rest:
        keep = batched_nms(
            torch.tensor([r.box for r in rest], dtype=torch.float64),
            torch.tensor([r.score for r in rest], dtype=torch.float64),
            label_ids(rest),
            iou,
        )
        expected = [rest[i] for i in sorted(keep.tolist())]
    assert out.regions[len(human) :] == expected
    assert report.dropped["duplicate_of_human"] == sum(duplicates)
    assert report.dropped["region_nms"] == len(rest) - len(expected)


def test_overlapping_boxes_of_different_labels_are_not_suppressed():
    box = [10, 10, 50, 50]
    record = Record(
        image="a.png",
        width=100,
        height=100,
        regions=[region(box, "dog", source=None), region(box, "cat", 0.9), region(box, "cat", 0.8)],
    )
    report = SkipReport()
    (out,) = filter_records([record], None, RegionFilter(), report)
    assert out.regions == record.regions[:2]
    assert dict(report.dropped) == {"region_nms": 1}
    assert report.examples["region_nms"] == [
        "a.png: region [10, 10, 50, 50] 'cat' overlaps a higher-scored region of its label (IoU > 0.5)"
    ]


def test_a_duplicate_of_a_human_box_overlaps_it_by_more_than_nms_iou_as_in_nms():
    human = region([0, 0, 10, 10], "dog", source=None)
    at_threshold = region([0, 0, 10, 20], "dog", 0.9)  # IoU 100 / 200 = 0.5 exactly: not above it
    above = region([0, 0, 10, 19], "dog", 0.9)  # IoU 100 / 190
    record = Record(image="a.png", width=100, height=100, regions=[human, at_threshold])
    (out,) = filter_records([record], None, RegionFilter(nms_iou=0.5), SkipReport())
    assert out.regions == [human, at_threshold]
    report = SkipReport()
    (out,) = filter_records(
        [replace(record, regions=[human, above])], None, RegionFilter(nms_iou=0.5), report
    )
    assert out.regions == [human]
    assert report.examples["duplicate_of_human"] == [
        "a.png: region [0, 0, 10, 19] 'dog' repeats the human box [0, 0, 10, 10] (IoU 0.53)"
    ]


def test_score_threshold_applies_to_generated_regions_only():
    record = Record(
        image="a.png",
        width=100,
        height=100,
        regions=[
            region([0, 0, 10, 10], "dog", 0.2),
            region([20, 0, 30, 10], "dog", 0.3),  # at the threshold: kept
            region([40, 0, 50, 10], "dog", None),  # no score: nothing to compare, kept
            region([60, 0, 70, 10], "dog", 0.1, source=None),  # human: kept whatever it says
        ],
    )
    report = SkipReport()
    (out,) = filter_records([record], None, RegionFilter(min_score=0.3), report)
    assert out.regions == record.regions[1:]
    assert dict(report.dropped) == {"region_low_score": 1}
    assert report.examples["region_low_score"] == ["a.png: region [0, 0, 10, 10] 'dog' score 0.2 < 0.3"]


@pytest.mark.parametrize(
    ("phrase", "non_visual"),
    [
        ("it", True),
        ("the background", True),
        ("Picture", True),
        ("the left side", True),
        ("top of the image.", True),
        ("this", True),  # nothing but a demonstrative
        ("a dog", False),
        ("a dog on the left", False),
        ("background music", False),
        ("stop sign", False),
    ],
)
def test_non_visual_phrases(phrase, non_visual):
    assert RegionFilter().is_non_visual(phrase) is non_visual


def test_blacklist_drops_generated_regions_and_grounding_phrases():
    text = "A dog and it near the background."
    dog, it, background = (
        Phrase((0, 5), [[0, 0, 10, 10]]),
        Phrase((10, 12), [[20, 20, 30, 30]]),
        Phrase((18, 32), [[0, 0, 100, 100]]),
    )
    record = Record(
        image="b.png",
        width=100,
        height=100,
        regions=[
            Region([0, 0, 10, 10], phrase="the background", source="grounder", score=0.9),
            Region([20, 0, 30, 10], category="dog", brief="it", source="captioner", score=0.9),
            Region([40, 0, 50, 10], phrase="a dog", source="grounder", score=0.9),
            Region([60, 0, 70, 10], phrase="the background"),  # human
        ],
        groundings=[
            Grounding(text, [dog, it, background], source="grounder", score=0.9),
            Grounding(text, [background], source="grounder", score=0.9),
            Grounding(text, [it]),  # human
        ],
    )
    assert [record.groundings[0].phrase_text(p) for p in (dog, it, background)] == [
        "A dog",
        "it",
        "the background",
    ]
    report = SkipReport()
    (out,) = filter_records([record], None, RegionFilter(), report)
    assert out.regions == record.regions[2:]
    assert [g.phrases for g in out.groundings] == [[dog], [it]]
    assert dict(report.dropped) == {
        "region_blacklisted_phrase": 2,
        "phrase_blacklisted": 3,
        "grounding_empty": 1,
    }
    assert (
        report.examples["phrase_blacklisted"][0]
        == "b.png: groundings[0] phrase 'it' of 'A dog and it near the background.'"
    )
    assert report.examples["grounding_empty"] == [
        "b.png: groundings[1] 'A dog and it near the background.' has no phrase left"
    ]


def test_low_scored_grounding_loses_its_phrases_and_an_emptied_record_is_kept():
    phrases = [Phrase((0, 5), [[0, 0, 10, 10]]), Phrase((10, 13), [[20, 20, 30, 30]])]
    record = Record(
        image="c.png",
        width=100,
        height=100,
        groundings=[Grounding("A dog and cat.", phrases, source="grounder", score=0.1)],
        regions=[region([0, 0, 10, 10], "dog", 0.05)],
    )
    report = SkipReport()
    out = filter_records([record], None, RegionFilter(min_phrase_score=0.3), report)
    assert len(out) == 1 and out[0].groundings == [] and out[0].regions == []
    assert dict(report.dropped) == {"phrase_low_score": 2, "grounding_empty": 1, "region_low_score": 1}


# -- the command ---------------------------------------------------------------------------------------------


def write_input(folder) -> tuple:
    (folder / "images").mkdir()
    records = [
        Record(
            image="images/1.png",
            width=100,
            height=100,
            texts={"brief": [generated("A dog.")]},
            regions=[
                region([0, 0, 50, 50], "dog", source=None),
                region([1, 1, 50, 50], "dog", 0.9),  # repeats the human box
                region([60, 60, 90, 90], "cat", 0.9),
                region([61, 61, 90, 90], "cat", 0.8),  # NMS
                region([0, 60, 30, 90], "cat", 0.1),  # low score
                Region([40, 0, 60, 20], phrase="it", source="grounder", score=0.9),
            ],
        ),
        Record(image="images/2.png", width=64, height=48, regions=[region([0, 0, 10, 10], "car", 0.05)]),
    ]
    path = folder / "generated.jsonl"
    write_records(records, path)
    return path, records


def test_cli_filter_end_to_end(tmp_path, capsys, monkeypatch):
    path, records = write_input(tmp_path)
    out = tmp_path / "out" / "filtered.jsonl"
    monkeypatch.setitem(sys.modules, "spacy", None)  # --no-text-filter needs no spaCy
    assert main(["filter", str(path), "-o", str(out), "--no-text-filter"]) == 0
    filtered = read_records(out)
    assert [r.image for r in filtered] == [
        str(tmp_path / "out" / "../images/1.png"),
        str(tmp_path / "out" / "../images/2.png"),
    ]
    assert filtered[0].regions == [records[0].regions[0], records[0].regions[2]]
    assert filtered[0].texts == {"brief": ["A dog."]} and filtered[1].regions == []
    report = json.loads((tmp_path / "out" / "filtered.report.json").read_text())
    assert report["dropped"] == {
        "duplicate_of_human": 1,
        "region_nms": 1,
        "region_low_score": 2,
        "region_blacklisted_phrase": 1,
    }
    assert (
        report["examples"]["region_low_score"][1]
        == f"{tmp_path / 'images/2.png'}: region [0, 0, 10, 10] 'car' score 0.05 < 0.3"
    )
    summary = capsys.readouterr().out
    assert "2 record(s), kept 3 of 8 annotations" in summary and "filtered.report.json" in summary


def test_cli_filter_options_reach_the_filter(tmp_path):
    path, records = write_input(tmp_path)
    out = tmp_path / "filtered.jsonl"
    assert (
        main(["filter", str(path), "-o", str(out), "--no-text-filter", "--min-score", "0", "--nms-iou", "1"])
        == 0
    )
    assert read_records(out)[1].regions == records[1].regions
    assert json.loads((tmp_path / "filtered.report.json").read_text())["dropped"] == {
        "region_blacklisted_phrase": 1
    }


def test_cli_filter_without_the_pipeline_fails_with_the_install_command(tmp_path, capsys, monkeypatch):
    path, _ = write_input(tmp_path)
    out = tmp_path / "filtered.jsonl"
    assert main(["filter", str(path), "-o", str(out), "--spacy-model", MISSING_PIPELINE]) == 2
    err = capsys.readouterr().err
    assert f"python -m spacy download {MISSING_PIPELINE}" in err and "Traceback" not in err
    assert not out.exists()
    monkeypatch.setitem(sys.modules, "spacy", None)
    assert main(["filter", str(path), "-o", str(out)]) == 2
    assert 'pip install "f2lightning[engine]"' in capsys.readouterr().err
