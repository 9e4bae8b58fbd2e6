"""Reading and writing JSONL record files, with every bad line either raised or counted."""

from __future__ import annotations

import codecs
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from f2lightning.data.schema import BadRecordError, Record
from f2lightning.data.skips import SkipReport

log = logging.getLogger(__name__)

OnBadSample = Literal["raise", "skip"]


def read_records(
    path: str | os.PathLike,
    on_bad_sample: OnBadSample = "raise",
    *,
    check_images: bool = False,
    categories: Iterable[str] | None = None,
    report: SkipReport | None = None,
) -> list[Record]:
    """Read a JSONL record file.

    Each record's ``image`` is resolved against the JSONL file's folder (absolute paths stay), so
    the returned records point at real files wherever the caller runs from. A bad line raises
    :class:`BadRecordError` naming ``file:line`` in ``'raise'`` mode; in ``'skip'`` mode it is
    counted in ``report`` (pass one to inspect or write it) and a warning summarises the skips.
    """
    if on_bad_sample not in ("raise", "skip"):
        raise ValueError(f"on_bad_sample must be 'raise' or 'skip', got {on_bad_sample!r}")
    path = Path(path)
    root = path.parent
    known = set(categories) if categories is not None else None
    report = report if report is not None else SkipReport()
    skipped_before = report.total
    records = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            where = f"{path.name}:{number}"
            if number == 1:  # editors on Windows start UTF-8 files with a byte-order mark ('utf-8-sig')
                raw = raw.removeprefix(codecs.BOM_UTF8)
            try:
                record = _parse_line(raw, where, known)
                if record is None:
                    continue
                record.image = str(root / record.image)
                if check_images and not os.path.isfile(record.image):
                    raise BadRecordError(where, "missing_image", f"image file {record.image} does not exist")
            except BadRecordError as error:
                if on_bad_sample == "raise":
                    raise
                report.add(error)
                continue
            records.append(record)
    if report.total > skipped_before:
        log.warning("%s: kept %d record(s), %s", path, len(records), report)
    return records


def _parse_line(raw: bytes, where: str, categories: set[str] | None) -> Record | None:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRecordError(
            where, "not_utf8", f"line is not valid UTF-8 ({e.reason} at byte {e.start})"
        ) from e
    if not line.strip():  # blank lines (e.g. a trailing newline) carry no record
        return None
    try:
        data = json.loads(line)
    except json.JSONDecodeError as e:
        raise BadRecordError(where, "malformed_json", f"malformed JSON: {e.msg} at column {e.colno}") from e
    except RecursionError as e:  # a record is a few levels deep; thousands of nested brackets are not one
        raise BadRecordError(where, "malformed_json", "malformed JSON: nested too deeply to decode") from e
    except ValueError as e:  # valid JSON that Python refuses, e.g. an integer of more than 4300 digits
        raise BadRecordError(where, "malformed_json", f"malformed JSON: {e}") from e
    return Record.from_json(data, where, categories)


def write_records(records: Iterable[Record], path: str | os.PathLike) -> int:
    """Write records as JSONL (UTF-8, one per line); returns how many were written."""
    n = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for record in records:
            f.write(record.to_json_line() + "\n")
            n += 1
    return n
