"""JSONL reading: every bad-line kind raises naming file:line, or is counted when skipped."""

from __future__ import annotations

import json
import logging

import pytest

from f2lightning.data.records import read_records, write_records
from f2lightning.data.schema import BadRecordError, Record, Region
from f2lightning.data.skips import SkipReport

GOOD = {
    "image": "img.png",
    "width": 64,
    "height": 48,
    "regions": [{"box": [1, 2, 30, 40], "category": "dog"}],
}

BAD_LINES = {
    "malformed_json": b'{"image": "img.png", "width": 64,',
    "not_utf8": b'{"image": "\xff\xfe.png", "width": 64, "height": 48}',
    "missing_image": json.dumps({**GOOD, "image": "nowhere.png"}).encode(),
    "box_outside_image": json.dumps({**GOOD, "regions": [{"box": [1, 2, 65, 40]}]}).encode(),
    "bad_box": json.dumps({**GOOD, "regions": [{"box": [30, 2, 1, 40]}]}).encode(),
    "nan_coordinate": b'{"image": "img.png", "width": 64, "height": 48, "regions": [{"box": [NaN, 2, 3, 4]}]}',
    "bad_polygon": json.dumps(
        {**GOOD, "regions": [{"box": [1, 2, 3, 4], "polygons": [[1, 2, 3, 4]]}]}
    ).encode(),
    "unknown_category": json.dumps({**GOOD, "regions": [{"box": [1, 2, 3, 4], "category": "cat"}]}).encode(),
    # used to pass validation, then crash setup in the serializers with no file or line
    "unwritable_text": json.dumps({**GOOD, "regions": [{"box": [1, 2, 3, 4], "category": "dog<"}]}).encode(),
    "blank_text": json.dumps({**GOOD, "texts": {"brief": [" "]}}).encode(),  # used to train as ""
}


def write_file(tmp_path, bad: bytes) -> str:
    (tmp_path / "img.png").write_bytes(b"")
    path = tmp_path / "data.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + bad + b"\n\n" + json.dumps(GOOD).encode() + b"\n")
    return str(path)


@pytest.mark.parametrize("reason", sorted(BAD_LINES))
def test_raise_names_file_and_line(tmp_path, reason: str) -> None:
    path = write_file(tmp_path, BAD_LINES[reason])
    with pytest.raises(BadRecordError) as info:
        read_records(path, "raise", check_images=True, categories=["dog"])
    assert info.value.reason == reason
    assert str(info.value).startswith("data.jsonl:2: ")


@pytest.mark.parametrize("reason", sorted(BAD_LINES))
def test_skip_counts_with_reason(tmp_path, caplog, reason: str) -> None:
    path = write_file(tmp_path, BAD_LINES[reason])
    report = SkipReport()
    with caplog.at_level(logging.WARNING):
        records = read_records(path, "skip", check_images=True, categories=["dog"], report=report)
    assert len(records) == 2
    assert report.dropped == {reason: 1}
    assert report.examples[reason][0].startswith("data.jsonl:2: ")
    assert f"{reason}: 1" in caplog.text  # never silent

    report.write(tmp_path / "skips.json")
    written = json.loads((tmp_path / "skips.json").read_text())
    assert written["total"] == 1 and written["dropped"] == {reason: 1}


def test_image_paths_resolve_against_the_jsonl_folder(tmp_path) -> None:
    path = write_file(tmp_path, json.dumps(GOOD).encode())
    records = read_records(path, check_images=True)
    assert [r.image for r in records] == [str(tmp_path / "img.png")] * 3


def test_write_then_read(tmp_path) -> None:
    record = Record(image="a b/é.png", width=10, height=10, regions=[Region(box=[0, 0, 5, 5], phrase="é")])
    assert write_records([record, record], tmp_path / "out.jsonl") == 2
    back = read_records(tmp_path / "out.jsonl")
    assert [r.regions for r in back] == [record.regions] * 2
    assert back[0].image == str(tmp_path / "a b/é.png")


def test_report_keeps_only_a_few_examples() -> None:
    report = SkipReport(max_examples=2)
    for i in range(5):
        report.add(BadRecordError(f"f.jsonl:{i}", "bad_box", "no area"))
    assert report.total == 5 and len(report.examples["bad_box"]) == 2
    assert str(report) == "dropped 5 (bad_box: 5)"


def test_unknown_mode(tmp_path) -> None:
    with pytest.raises(ValueError, match="on_bad_sample"):
        read_records(write_file(tmp_path, b""), "ignore")


@pytest.mark.parametrize(
    "line",
    [b"[" * 100_000 + b"]" * 100_000, b'{"image": "img.png", "width": ' + b"9" * 5000 + b', "height": 48}'],
    ids=["nested-100000-deep", "5000-digit-integer"],
)
def test_json_python_cannot_decode_is_a_malformed_line(tmp_path, line: bytes) -> None:
    # Valid JSON that Python's decoder refuses (RecursionError, ValueError) counts like any malformed line.
    path = write_file(tmp_path, line)
    with pytest.raises(BadRecordError, match=r"^data\.jsonl:2: malformed JSON: ") as info:
        read_records(path, "raise")
    assert info.value.reason == "malformed_json"
    report = SkipReport()
    assert len(read_records(path, "skip", report=report)) == 2
    assert report.dropped == {"malformed_json": 1}


def test_a_byte_order_mark_before_the_first_record_is_read_past(tmp_path) -> None:
    # Files saved as "UTF-8 with BOM" used to lose their first record as malformed JSON.
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n" + json.dumps(GOOD).encode() + b"\n")
    report = SkipReport()
    records = read_records(path, "skip", report=report)
    assert len(records) == 2 and report.total == 0
    assert records[0].regions == records[1].regions


def test_a_byte_order_mark_later_in_the_file_is_not_a_record(tmp_path) -> None:
    path = write_file(tmp_path, b"\xef\xbb\xbf" + json.dumps(GOOD).encode())
    with pytest.raises(BadRecordError, match=r"^data\.jsonl:2: malformed JSON") as info:
        read_records(path, "raise")
    assert info.value.reason == "malformed_json"
