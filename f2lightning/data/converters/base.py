"""What every converter shares: the format registry, the drop report, the checks that turn a file
not in its format into a :class:`ConversionError` naming it, and the schema check of what is written."""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import math
import os
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from PIL import Image

from f2lightning.data.schema import BadRecordError, Record
from f2lightning.data.skips import SkipReport


class ConversionError(ValueError):
    """An input file that is not in the format its converter reads. The message starts with the
    file's path (and says where in it, e.g. ``images[3].width``); ``f2lightning convert`` prints
    it as one line and exits with status 2."""

    def __init__(self, path: str | os.PathLike, message: str):
        super().__init__(f"{os.fspath(path)}: {message}")
        self.path = os.fspath(path)


class BadAnnotation(Exception):
    """One annotation (a COCO instance, a question, ...) that cannot be converted; the converter
    drops it and counts it under ``reason``."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Converter:
    """A public format. ``convert`` is the Python API: its keyword names match the ``dest`` of
    the arguments ``add_arguments`` puts on the command line, plus ``report``. Its parameters
    annotated as ``os.PathLike`` are its files and folders (:func:`path_parameters`). ``splits``:
    ``convert(..., splits=[...])`` keeps only those splits of a file that holds several."""

    name: str
    help: str
    convert: Callable[..., list[Record]]
    add_arguments: Callable[[argparse.ArgumentParser], None]
    splits: bool = False


CONVERTERS: dict[str, Converter] = {}


def register_converter(converter: Converter) -> Converter:
    if converter.name in CONVERTERS:
        raise ValueError(f"converter {converter.name!r} is already registered")
    CONVERTERS[converter.name] = converter
    return converter


def path_parameters(reader: Callable[..., Any]) -> frozenset[str]:
    """The parameters of a file reader (a converter, a benchmark's own loader) that name files or
    folders: those whose annotation admits ``os.PathLike``. A benchmark config gives them relative
    to its data root."""
    return frozenset(name for name, hint in typing.get_type_hints(reader).items() if _admits_path(hint))


def _admits_path(hint: Any) -> bool:
    return any(
        h is os.PathLike or typing.get_origin(h) is os.PathLike for h in typing.get_args(hint) or (hint,)
    )


def get_converter(name: str) -> Converter:
    try:
        return CONVERTERS[name]
    except KeyError:
        raise KeyError(f"unknown format {name!r}; known: {', '.join(sorted(CONVERTERS))}") from None


def checked_records(convert: Callable[..., list[Record]]) -> Callable[..., list[Record]]:
    """Decorates a converter function: the one place where what converters return is checked.

    The wrapped function gets a report (a fresh one when the caller passes none) and does not
    count records itself. Every record it returns must survive ``Record.from_json(record.to_json())``,
    the validation training applies; one that does not is dropped as ``invalid_record_<reason>``
    (named in the report's examples) instead of being written, and the rest are counted in
    ``report.records``. This holds for the Python API and ``f2lightning convert`` alike.
    """
    signature = inspect.signature(convert)

    @functools.wraps(convert)
    def wrapper(*args: Any, report: SkipReport | None = None, **kwargs: Any) -> list[Record]:
        report = with_report(report)
        kept = []
        for record in convert(*args, report=report, **kwargs):
            try:
                Record.from_json(record.to_json(), where=record.image)
            except BadRecordError as error:
                report.drop(f"invalid_record_{error.reason}", example=str(error))
                continue
            kept.append(record)
        report.records += len(kept)
        return kept

    # Callers see ``report`` as optional, which it is for the wrapper.
    wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[
            p.replace(default=None) if p.name == "report" else p for p in signature.parameters.values()
        ]
    )
    return wrapper


def read_image_size(path: str) -> tuple[int, int] | None:
    """``(width, height)`` from the file header (no decoding), or None when it is missing or
    unreadable; for formats whose annotations do not store the size."""
    try:
        with Image.open(path) as image:
            return image.size
    except (FileNotFoundError, OSError):
        return None


def with_report(report: SkipReport | None) -> SkipReport:
    """``report``, or a fresh one; for format readers outside the registry (the evaluation's own)."""
    return report if report is not None else SkipReport()


def image_path(image_dir: str | os.PathLike, name: str) -> str:
    return os.path.join(os.fspath(image_dir), name)


def read_text(path: str | os.PathLike, encoding: str = "utf-8") -> str:
    """A text annotation file, or a :class:`ConversionError` naming it when it is missing or not text."""
    try:
        with open(path, encoding=encoding) as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as error:
        raise ConversionError(path, f"cannot be read as {encoding} text ({error})") from None


def require_folder(path: str | os.PathLike, what: str) -> None:
    if not os.path.isdir(path):
        raise ConversionError(path, f"is not a folder (expected {what})")


def json_type(value: Any) -> str:
    """JSON's name for a decoded value's type, for messages about files (not Python's)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return {str: "string", list: "list", dict: "object"}.get(type(value), type(value).__name__)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_finite_numbers(value: Any, length: int | None = None) -> bool:
    """A JSON list of finite numbers (of ``length`` items when given)."""
    return (
        isinstance(value, list)
        and (length is None or len(value) == length)
        and all(is_number(v) and math.isfinite(v) for v in value)
    )


class JsonFile:
    """A JSON annotation file whose top level is an object (or, with ``top_level="list"``, a list of
    objects), with the field checks converters use on it: each failed check is a
    :class:`ConversionError` naming the file and the entry (``images[3].width must be a positive
    integer, got "64"``), never a bare KeyError or TypeError.
    """

    def __init__(self, path: str | os.PathLike, top_level: Literal["object", "list"] = "object"):
        self.path = os.fspath(path)
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
            raise ConversionError(self.path, f"cannot be read as JSON ({error})") from None
        if top_level == "object":
            self.data: dict | list[dict] = self.object(data, "the top level")
        elif isinstance(data, list):
            self.data = [self.object(entry, f"[{i}]") for i, entry in enumerate(data)]
        else:
            raise self.error(f"the top level must be a list, got a {json_type(data)}")

    def error(self, message: str) -> ConversionError:
        return ConversionError(self.path, message)

    def object(self, value: Any, where: str) -> dict:
        if not isinstance(value, dict):
            raise self.error(f"{where} must be a JSON object, got a {json_type(value)}")
        return value

    def value(self, obj: dict, key: str, where: str) -> Any:
        """``obj[key]``; a missing key is an error naming ``where``."""
        if key not in obj:
            raise self.error(f"{where or 'the top level'} has no {key!r}")
        return obj[key]

    def entries(self, obj: dict, key: str, where: str = "") -> list[dict]:
        """``obj[key]`` as a list of objects (``images``, ``annotations``, ...)."""
        name = f"{where}.{key}" if where else key
        values = self.value(obj, key, where)
        if not isinstance(values, list):
            raise self.error(f"{name} must be a list, got a {json_type(values)}")
        return [self.object(v, f"{name}[{i}]") for i, v in enumerate(values)]

    def string(self, obj: dict, key: str, where: str, *, default: str | None = None) -> str:
        """A non-empty string; ``default`` when the key is absent and a default is given."""
        if key not in obj and default is not None:
            return default
        value = self.value(obj, key, where)
        if not isinstance(value, str) or not value:
            raise self.error(f"{where}.{key} must be a non-empty string, got {value!r}")
        return value

    def size(self, obj: dict, key: str, where: str) -> int:
        """A positive pixel count (an integral float such as ``640.0`` is accepted)."""
        value = self.value(obj, key, where)
        if not is_number(value) or not math.isfinite(value) or value != int(value) or value <= 0:
            raise self.error(f"{where}.{key} must be a positive integer, got {value!r}")
        return int(value)

    def identifier(self, obj: dict, key: str, where: str) -> int | str:
        """An id that other entries refer to: an integer or a string."""
        value = self.value(obj, key, where)
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise self.error(f"{where}.{key} must be an integer or a string, got {value!r}")
        return value

    def index(
        self, entries: list[dict], key: str, what: str, *, required: bool = True
    ) -> dict[int | str, dict]:
        """Entries by their ``key`` (``id``); a repeated id is an error naming it, because tools
        that index the file by id (pycocotools, MMDetection) would keep only one of them.
        With ``required=False`` entries without the key are left out of the index."""
        out: dict[int | str, dict] = {}
        for i, entry in enumerate(entries):
            if not required and key not in entry:
                continue
            identifier = self.identifier(entry, key, f"{what}[{i}]")
            if identifier in out:
                raise self.error(f"{what}[{i}] repeats {key} {identifier!r}; ids must be unique")
            out[identifier] = entry
        return out
