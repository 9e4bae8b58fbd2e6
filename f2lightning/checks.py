"""What configuration checks share: the error they raise and the predicates they use on raw config values.

Each part checks its own values where they are defined (`Florence2DataModule`: `data_problems`,
`Florence2LitModule`: `model_problems`); `f2lightning.training.validation` adds the rules that need two parts
together and runs all of them before anything is built, so one message lists every problem.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """An impossible or contradictory training configuration; the message lists every problem found."""


def raise_problems(problems: Sequence[str], what: str = "training configuration") -> None:
    """One `ConfigError` listing every problem, or nothing when there is none."""
    if problems:
        raise ConfigError(f"invalid {what}:\n  - " + "\n  - ".join(problems))


def is_path(path: Any, check: Any) -> bool:
    """`check(Path(path))`; a value that is not a usable path at all (a number, a name with a NUL byte) fails."""
    try:
        return bool(check(Path(path)))
    except (TypeError, ValueError, OSError):
        return False


def is_count(value: Any) -> bool:
    """A whole number >= 1 (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def is_positive(value: Any) -> bool:
    """A finite number > 0 (not a bool)."""
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    )
