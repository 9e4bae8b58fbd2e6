"""Which texts a target can carry: the one rule shared by the serializers and record validation.

The parsers (`f2lightning.tasks.formats`) read a box or polygon label up to the next `<` and never across a
line break, and strip it; an OCR line's text ends at its eight location tokens. A label that breaks these
rules would not read back, so the serializers refuse it, and `f2lightning.data.schema` applies the same
functions so that a record that validates never fails to serialize later, deep inside setup.
"""

from __future__ import annotations

from f2lightning.tasks.locations import LOCATION_PATTERN

LABEL_FORBIDDEN = "<\n"
OCR_FORBIDDEN = "\n"


def label_problem(text: str, forbidden: str = LABEL_FORBIDDEN) -> str | None:
    """Why `text` cannot be written as a label (e.g. `holds '<'`), or None when it can."""
    stripped = text.strip()
    if not stripped:
        return "is empty or only whitespace"
    held = [repr(c) for c in forbidden if c in stripped]
    return f"holds {' and '.join(held)}" if held else None


def ocr_text_problem(text: str) -> str | None:
    """Why `text` cannot be written as an OCR line's text (it may hold `<`, not a location token), or None."""
    problem = label_problem(text, OCR_FORBIDDEN)
    if problem is None and LOCATION_PATTERN.search(text):
        return "holds a location token"
    return problem
