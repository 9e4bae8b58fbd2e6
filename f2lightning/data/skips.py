"""The one report of what was left out: records a reader or converter dropped, samples whose image could not be
used in training or validation. Nothing is dropped without being counted in one."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class SkipReport:
    """Counts per machine-readable reason (`crowd_region`, `missing_image`, ...) and the first `max_examples`
    examples of each (a file and line, an annotation id, an image and what is wrong with it) so they can be
    looked up. `records` is what a converter kept (`checked_records` counts it)."""

    max_examples: int = 5
    records: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.dropped.values())

    def drop(self, reason: str, n: int = 1, example: str | None = None) -> None:
        """Count `n` items left out for `reason`; an `example` names one of them."""
        if n <= 0:  # callers pass "how many of these were bad"; a reason that never occurred is not listed
            return
        self.dropped[reason] += n
        if example is not None:
            named = self.examples.setdefault(reason, [])
            if len(named) < self.max_examples:
                named.append(example)

    def add(self, error: Exception) -> None:
        """Count an error that carries its reason (`BadRecordError`, `BadImageError`), its message the example."""
        self.drop(error.reason, example=str(error))  # type: ignore[attr-defined]

    def to_json(self) -> dict[str, Any]:
        return {"total": self.total, "dropped": dict(self.dropped), "examples": self.examples}

    def write(self, path: str | os.PathLike) -> None:
        Path(path).write_text(
            json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )

    def __str__(self) -> str:
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.dropped.items()))
        return f"dropped {self.total} ({reasons})" if self.total else "dropped nothing"
