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
    Instruction,
    OcrLine,
    Phrase,
    Record,
    Region,
    SourcedText,
    VqaPair,
    source_of,
)
from f2lightning.tasks import get_task

words = st.text(alphabet="abcdefgh xyzé漢", min_size=1, max_size=12).filter(str.strip)
# Provenance of a generated annotation (source, score), or a human one's (None, None).
origins = st.none() | st.tuples(words, st.none() | st.floats(0, 1))


@st.composite
def records(draw) -> Record:
    w, h = draw(st.integers(1, 2000)), draw(st.integers(1, 2000))

    def coord(limit: int) -> float:
        return draw(st.floats(0, limit, allow_nan=False, allow_infinity=False))

    def box() -> list[float]:
        xs = sorted({coord(w) for _ in range(2)} | {0.0, float(w)})
        ys = sorted({coord(h) for _ in range(2)} | {0.0, float(h)})
        return [xs[0], ys[0], xs[-1], ys[-1]]

    def origin() -> dict:
        drawn = draw(origins)
        return {} if drawn is None else {"source": drawn[0], "score": drawn[1]}

    def caption() -> str:
        drawn = draw(words)
        return SourcedText(drawn, **origin()) if draw(st.booleans()) else drawn

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
            **origin(),
            **{f"polygons_{k}": v for k, v in origin().items()},
        )
        for _ in range(draw(st.integers(0, 3)))
    ]
    exhaustive = draw(st.booleans())
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
            g: [caption() for _ in range(draw(st.integers(1, 2)))]
            for g in GRANULARITIES
            if draw(st.booleans())
        },
        regions=regions,
        exhaustive=exhaustive,
        groundings=[
            Grounding(
                text=text, phrases=phrases, granularity=draw(st.sampled_from(GRANULARITIES)), **origin()
            )
        ],
        ocr=[
            OcrLine(quad=[*polygon()[:6], coord(w), coord(h)], text=draw(words), **origin())
            for _ in range(draw(st.integers(0, 2)))
        ],
        vqa=[VqaPair(question=draw(words), answers=draw(st.lists(words, min_size=1, max_size=3)))],
        # only where it does not contradict the regions
        no_objects=not regions and exhaustive and draw(st.booleans()),
        instructions=[
            Instruction(
                prompt=draw(words), target=draw(words), task=draw(st.sampled_from(["instruction", "kv"]))
            )
            for _ in range(draw(st.integers(0, 2)))
        ],
    )


@settings(max_examples=60, deadline=None)
@given(records())
def test_json_round_trip(record: Record) -> None:
    line = record.to_json_line()
    assert "\n" not in line
    assert Record.from_json(json.loads(line)) == record
    assert Record.from_json(json.loads(line)).to_json_line() == line


def test_generated_annotations_keep_their_source_and_score_and_old_files_read_unchanged() -> None:
    line = {
        "image": "a.png", "width": 100, "height": 50,
        "texts": {"brief": ["a dog", {"text": "a brown dog", "source": "florence2-round0", "score": 0.8}]},
        "regions": [{"box": [1, 1, 20, 20], "category": "dog"},
                    {"box": [2, 2, 30, 30], "category": "dog", "source": "dino", "score": 0.5}],
    }  # fmt: skip
    record = Record.from_json(line)
    human, generated = record.texts["brief"]
    assert (source_of(human), source_of(generated), generated.score) == (None, "florence2-round0", 0.8)
    assert generated == "a brown dog" and generated.upper() == "A BROWN DOG"  # still a str to every producer
    assert [(source_of(r), r.score) for r in record.regions] == [(None, None), ("dino", 0.5)]
    assert record.to_json() == line  # human annotations are written as before: no provenance keys


@pytest.mark.parametrize("score", [1.5, -0.1, "high", True])
def test_a_score_outside_zero_one_is_rejected(score) -> None:
    with pytest.raises(BadRecordError, match=r"regions\[0\]\.score must be a number in \[0, 1\]"):
        Record.from_json(minimal(regions=[{"box": [1, 1, 2, 2], "source": "dino", "score": score}]))


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
        ({"width": 10**400}, "bad_field", "width must be a positive integer (at most 2147483647), got 1000"),
        # JSON integers beyond any float used to end in OverflowError
        ({"regions": [{"box": [1, 1, 10**400, 2]}]}, "nan_coordinate", "non-finite"),
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


BOX = [1, 1, 2, 2]


@pytest.mark.parametrize(
    ("fields", "field", "why"),
    [
        ({"regions": [{"box": BOX, "category": "a<b"}]}, "regions[0].category", "holds '<'"),
        ({"regions": [{"box": BOX, "category": " \t"}]}, "regions[0].category", "only whitespace"),
        ({"regions": [{"box": BOX, "phrase": "two\nlines"}]}, "regions[0].phrase", "holds '\\n'"),
        ({"regions": [{"box": BOX, "brief": "<b>bold"}]}, "regions[0].brief", "holds '<'"),
        ({"regions": [{"box": BOX, "referring": ["ok", "the <dog>"]}]}, "regions[0].referring[1]", "'<'"),
        (
            {"groundings": [{"text": "a  dog", "phrases": [{"span": [1, 2], "boxes": [BOX]}]}]},
            "groundings[0].phrases[0] (its span's text)",
            "only whitespace",
        ),
        ({"ocr": [{"quad": [0] * 8, "text": "EXIT<loc_5>"}]}, "ocr[0].text", "location token"),
        ({"ocr": [{"quad": [0] * 8, "text": "EX\nIT"}]}, "ocr[0].text", "holds '\\n'"),
    ],
    ids=[
        "category<",
        "category-blank",
        "phrase-newline",
        "brief<",
        "referring<",
        "span-blank",
        "ocr-loc",
        "ocr-newline",
    ],
)
def test_text_the_task_language_cannot_write_is_rejected(fields: dict, field: str, why: str) -> None:
    # These used to validate and then crash setup with a ValueError from the serializers, naming no line.
    with pytest.raises(BadRecordError) as info:
        Record.from_json(minimal(**fields), "data.jsonl:4")
    assert info.value.reason == "unwritable_text"
    assert str(info.value).startswith(f"data.jsonl:4: {field} ")
    assert why in str(info.value)


@pytest.mark.parametrize(
    "fields",
    [
        {"texts": {"brief": ["a dog", "   "]}},
        {"vqa": [{"question": " \n", "answers": ["yes"]}]},
        {"vqa": [{"question": "why?", "answers": ["yes", "\t"]}]},
        {"groundings": [{"text": "  ", "phrases": []}]},
    ],
    ids=["caption", "question", "answer", "grounding-text"],
)
def test_whitespace_only_text_is_rejected_as_blank(fields: dict) -> None:
    # It used to train as an empty target (or prompt); now the record is counted as `blank_text`.
    with pytest.raises(BadRecordError, match=r"^data\.jsonl:9: .* is only whitespace") as info:
        Record.from_json(minimal(**fields), "data.jsonl:9")
    assert info.value.reason == "blank_text"


def test_ocr_text_may_hold_angle_brackets() -> None:
    # The quad-box parser reads a line's text up to its location tokens, so '<' is writable there.
    record = Record.from_json(minimal(ocr=[{"quad": [0, 0, 9, 0, 9, 9, 0, 9], "text": "a < b"}]))
    assert record.ocr[0].text == "a < b"


TRICKY = [
    "dog",
    " dog ",
    "",
    " ",
    "a<b",
    "<",
    "a>b",
    "two\nlines",
    "tail\n",
    "\r",
    "<loc_5>",
    "x<loc_5>",
    "{input}",
    "</s>",
    "a<pad>b",
    "<image>",
    '{"total": "12.50"}',
]


@pytest.mark.parametrize("text", TRICKY)
def test_the_schema_accepts_exactly_the_labels_the_serializers_can_write(text: str) -> None:
    def validates(**fields) -> bool:
        try:
            Record.from_json(minimal(**fields))
        except BadRecordError:
            return False
        return True

    def writes(token: str, annotation: dict) -> bool:
        try:
            get_task(token).serialize(annotation, (100, 50))
        except ValueError:
            return False
        return True

    box = {"bboxes": [BOX], "labels": [text]}
    assert validates(regions=[{"box": BOX, "category": text}]) == writes("<OD>", box)
    quad = {"quad_boxes": [[0] * 8], "labels": [text]}
    assert validates(ocr=[{"quad": [0] * 8, "text": text}]) == writes("<OCR_WITH_REGION>", quad)
    instruction = validates(instructions=[{"prompt": "Read it.", "target": text}])
    assert instruction == writes("<INSTRUCTION>", {"text": text})
    assert validates(instructions=[{"prompt": text, "target": "x"}]) == instruction  # prompts: the same rule


# ------------------------------------------------------------------------------------ verified negatives
def test_no_objects_is_written_only_when_true_and_survives_the_round_trip() -> None:
    negative = Record.from_json(minimal(no_objects=True), "neg.jsonl:1")
    assert negative.no_objects and negative.to_json() == minimal(no_objects=True)
    assert Record.from_json(json.loads(negative.to_json_line())) == negative
    assert "no_objects" not in Record.from_json(minimal()).to_json()  # files without the flag read unchanged
    assert not Record.from_json(minimal()).no_objects


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"regions": [{"box": BOX, "category": "dog"}]}, "no_objects is true (an image checked to hold no "
         "object) but it has 1 region(s)"),
        ({"exhaustive": False},
         "no_objects is true (every object checked: there is none) but exhaustive is false"),
    ],
    ids=["with-regions", "not-exhaustive"],
)  # fmt: skip
def test_a_negative_that_contradicts_itself_is_rejected(fields: dict, message: str) -> None:
    with pytest.raises(BadRecordError) as info:
        Record.from_json(minimal(no_objects=True, **fields), "neg.jsonl:2")
    assert info.value.reason == "no_objects_conflict" and str(info.value) == f"neg.jsonl:2: {message}"


def test_no_objects_must_be_a_boolean() -> None:
    with pytest.raises(BadRecordError, match="no_objects must be true or false, got 'yes'"):
        Record.from_json(minimal(no_objects="yes"))


# ------------------------------------------------------------------------------------------ instructions
def test_instructions_round_trip_and_the_default_task_is_not_written() -> None:
    line = minimal(instructions=[
        {"prompt": "Extract the invoice fields as JSON", "target": '{"total": "12.50", "items": ["a", "a"]}',
         "task": "json_extraction"},
        {"prompt": "What is the date?", "target": "2024-03-01"},
    ])  # fmt: skip
    record = Record.from_json(line)
    assert record.instructions == [
        Instruction(
            "Extract the invoice fields as JSON", '{"total": "12.50", "items": ["a", "a"]}', "json_extraction"
        ),
        Instruction("What is the date?", "2024-03-01", "instruction"),
    ]  # fmt: skip
    assert record.to_json() == line
    assert Record.from_json(json.loads(record.to_json_line())) == record


@pytest.mark.parametrize(
    ("instruction", "reason", "message"),
    [
        ({"prompt": " ", "target": "x"}, "blank_text", "instructions[0].prompt ' ' is only whitespace"),
        ({"prompt": "Read it."}, "bad_field", "instructions[0].target must be a non-empty string, got None"),
        ({"prompt": "Read it.", "target": 12.5}, "bad_field",
         "instructions[0].target must be a non-empty string"),
        ({"prompt": "Read it.", "target": "done</s>"}, "unwritable_text",
         "instructions[0].target 'done</s>' cannot be trained verbatim: it holds '</s>'"),
        ({"prompt": "Where is it? <loc_3>", "target": "left"}, "unwritable_text",
         "instructions[0].prompt 'Where is it? <loc_3>' cannot be trained verbatim: it holds '<loc_3>'"),
        ({"prompt": "<image> Describe it.", "target": "a dog"}, "unwritable_text",
         "instructions[0].prompt '<image> Describe it.' cannot be trained verbatim: it holds '<image>'"),
        ({"prompt": "Read it.", "target": "x", "task": ""}, "bad_field",
         "instructions[0].task must be a non-empty"),
        ("Read it.", "bad_field", "instructions[0] must be an object, got str"),
    ],
    ids=["blank-prompt", "no-target", "number-target", "eos", "location", "image-token", "empty-task",
         "string"],
)  # fmt: skip
def test_an_instruction_that_cannot_be_trained_verbatim_is_rejected(
    instruction, reason: str, message: str
) -> None:
    with pytest.raises(BadRecordError) as info:
        Record.from_json(minimal(instructions=[instruction]), "i.jsonl:3")
    assert info.value.reason == reason and str(info.value).startswith(f"i.jsonl:3: {message}")


def test_every_special_token_of_the_tokenizer_is_refused_in_free_text() -> None:
    # A token the tokenizer turns into a control token would not come back as written.
    from f2lightning.tasks.formats import free_text_problem
    from f2lightning.tokenizer import IMAGE_TOKEN

    for token in ("<s>", "</s>", "<pad>", IMAGE_TOKEN, "<loc_0>", "<loc_999>"):
        assert free_text_problem(f"a {token} b") == f"holds {token!r}"
    assert free_text_problem('{"a": "<b>"}') is None  # other angle brackets are text
