"""Record schema: JSON round trip and field validation."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from f2lightning.data.schema import (
    GRANULARITIES,
    BadRecordError,
    Grounding,
    OcrLine,
    Phrase,
    Record,
    Region,
    VqaPair,
)

words = st.text(alphabet="abcdefgh xyzé漢", min_size=1, max_size=12).filter(str.strip)


@st.composite
def records(draw) -> Record:
    w, h = draw(st.integers(1, 2000)), draw(st.integers(1, 2000))

    def coord(limit: int) -> float:
        return draw(st.floats(0, limit, allow_nan=False, allow_infinity=False))

    def box() -> list[float]:
        xs = sorted({coord(w) for _ in range(2)} | {0.0, float(w)})
        ys = sorted({coord(h) for _ in range(2)} | {0.0, float(h)})
        return [xs[0], ys[0], xs[-1], ys[-1]]

    def polygon() -> list[float]:
        return [coord(w if i % 2 == 0 else h) for i in range(2 * draw(st.integers(3, 6)))]

    regions = [
        Region(
            box=box(),
            category=draw(st.none() | words),
            phrase=draw(st.none() | words),
            brief=draw(st.none() | words),
            polygons=[polygon() for _ in range(draw(st.integers(0, 2)))],
            referring=draw(st.lists(words, max_size=2)),
        )
        for _ in range(draw(st.integers(0, 3)))
    ]
    text = draw(words)
    phrases = [
        Phrase(span=(0, len(text)), boxes=[box()], polygons=[polygon()] if draw(st.booleans()) else [])
        for _ in range(draw(st.integers(0, 2)))
    ]
    return Record(
        image=draw(words),
        width=w,
        height=h,
        id=draw(st.none() | words),
        source=draw(st.none() | words),
        texts={
            g: draw(st.lists(words, min_size=1, max_size=2)) for g in GRANULARITIES if draw(st.booleans())
        },
        regions=regions,
        exhaustive=draw(st.booleans()),
        groundings=[Grounding(text=text, phrases=phrases, granularity=draw(st.sampled_from(GRANULARITIES)))],
        ocr=[
            OcrLine(quad=[*polygon()[:6], coord(w), coord(h)], text=draw(words))
            for _ in range(draw(st.integers(0, 2)))
        ],
        vqa=[VqaPair(question=draw(words), answers=draw(st.lists(words, min_size=1, max_size=3)))],
    )


@settings(max_examples=60, deadline=None)
@given(records())
def test_json_round_trip(record: Record) -> None:
    line = record.to_json_line()
    assert "\n" not in line
    assert Record.from_json(json.loads(line)) == record
    assert Record.from_json(json.loads(line)).to_json_line() == line


def minimal(**fields) -> dict:
    return {"image": "a.png", "width": 100, "height": 50, **fields}


@pytest.mark.parametrize(
    ("fields", "reason", "message"),
    [
        (
            {"regions": [{"box": [10, 10, 120, 20]}]},
            "box_outside_image",
            "regions[0].box [10, 10, 120, 20] outside image 100x50",
        ),
        ({"regions": [{"box": [10, 10, 5, 20]}]}, "bad_box", "no area"),
        ({"regions": [{"box": [10, float("nan"), 20, 20]}]}, "nan_coordinate", "non-finite"),
        ({"regions": [{"box": [1, 1, 2, 2], "polygons": []}]}, "bad_polygon", "empty list"),
        ({"regions": [{"box": [1, 1, 2, 2], "polygons": [[1, 1, 2, 2]]}]}, "bad_polygon", "at least 3"),
        ({"regions": [{"box": [1, 1, 2, 2], "category": "unicorn"}]}, "unknown_category", "'unicorn'"),
        ({"ocr": [{"quad": [0, 0, 1, 0, 1, 1], "text": "x"}]}, "bad_field", "8 numbers"),
        (
            {"groundings": [{"text": "a dog", "phrases": [{"span": [2, 9], "boxes": [[1, 1, 2, 2]]}]}]},
            "bad_span",
            "5-char",
        ),
        ({"texts": {"long": ["x"]}}, "bad_field", "unknown granularity"),
        ({"vqa": [{"question": "why?", "answers": []}]}, "bad_field", "answers is empty"),
        ({"width": 0}, "bad_field", "width must be a positive integer"),
    ],
)
def test_validation_names_the_place(fields: dict, reason: str, message: str) -> None:
    with pytest.raises(BadRecordError) as info:
        Record.from_json(minimal(**fields), "data.jsonl:17", categories={"dog"})
    assert info.value.reason == reason
    assert str(info.value).startswith("data.jsonl:17: ")
    assert message in str(info.value)


def test_missing_image_field() -> None:
    with pytest.raises(BadRecordError, match=r"x\.jsonl:3: image must be a non-empty string"):
        Record.from_json({"width": 1, "height": 1}, "x.jsonl:3")
