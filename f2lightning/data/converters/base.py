"""What every converter shares: the format registry, the drop report and image-size lookup."""

from __future__ import annotations

import argparse
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image

from f2lightning.data.schema import Record


@dataclass
class ConversionReport:
    """Counts of what a converter left out and why (crowd boxes, don't-care text, ...): a
    conversion never drops anything without saying so."""

    records: int = 0
    dropped: Counter = field(default_factory=Counter)

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] += n

    def __str__(self) -> str:
        dropped = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.dropped.items()))
        return f"{self.records} record(s)" + (f"; dropped {dropped}" if dropped else "")


@dataclass(frozen=True)
class Converter:
    """A public format. ``convert`` is the Python API: its keyword names match the ``dest`` of
    the arguments ``add_arguments`` puts on the command line, plus ``report``."""

    name: str
    help: str
    convert: Callable[..., list[Record]]
    add_arguments: Callable[[argparse.ArgumentParser], None]


CONVERTERS: dict[str, Converter] = {}


def register_converter(converter: Converter) -> Converter:
    if converter.name in CONVERTERS:
        raise ValueError(f"converter {converter.name!r} is already registered")
    CONVERTERS[converter.name] = converter
    return converter


def get_converter(name: str) -> Converter:
    try:
        return CONVERTERS[name]
    except KeyError:
        raise KeyError(f"unknown format {name!r}; known: {', '.join(sorted(CONVERTERS))}") from None


def read_image_size(path: str) -> tuple[int, int] | None:
    """``(width, height)`` from the file header (no decoding), or None when it is missing or
    unreadable; for formats whose annotations do not store the size."""
    try:
        with Image.open(path) as image:
            return image.size
    except (FileNotFoundError, OSError):
        return None


def with_report(report: ConversionReport | None) -> ConversionReport:
    return report if report is not None else ConversionReport()


def image_path(image_dir: str | os.PathLike, name: str) -> str:
    return os.path.join(os.fspath(image_dir), name)
