"""Canonical geometry for target texts: one shape, one token sequence.

Coordinates are image pixels with y pointing *down*. "Clockwise" means clockwise as seen on screen, which in
these coordinates is a *positive* shoelace area (the opposite sign of the usual y-up convention): the corners
top-left (0, 0) → top-right (1, 0) → bottom-right (1, 1) → bottom-left (0, 1) have area +1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def normalise_box(box: Sequence[float]) -> list[float]:
    """`[x0, y0, x1, y1]` with x0 <= x1 and y0 <= y1 (top-left then bottom-right corner)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]


def signed_area(coords: Sequence[float]) -> float:
    """Shoelace area of a flat `[x0, y0, x1, y1, ...]` ring; positive when clockwise on screen."""
    xs, ys = coords[0::2], coords[1::2]
    n = len(xs)
    return sum(xs[i] * ys[(i + 1) % n] - xs[(i + 1) % n] * ys[i] for i in range(n)) / 2


def clockwise_polygon(coords: Sequence[float]) -> list[float]:
    """The same ring clockwise on screen, keeping its first vertex first (the starting vertex is the
    annotator's choice; only the direction is canonical)."""
    if len(coords) < 6 or len(coords) % 2:
        raise ValueError(f"a polygon needs at least 3 (x, y) vertices, got {len(coords)} coordinates")
    flat = [float(v) for v in coords]
    if signed_area(flat) >= 0:
        return flat
    points = [flat[i : i + 2] for i in range(0, len(flat), 2)]
    return [v for p in points[:1] + points[:0:-1] for v in p]


def clockwise_quad(coords: Sequence[float]) -> list[float]:
    """The four corners clockwise on screen starting from the top-left one (paper §3.1).

    Corners are sorted by angle around their centroid, which also untangles a "bow-tie" order; with y down, a
    growing `atan2` angle turns clockwise on screen. The top-left corner is the one with the smallest x + y
    (ties: the higher one), the usual convention of text-detection datasets.
    """
    if len(coords) != 8:
        raise ValueError(f"a quad box has 8 coordinates, got {len(coords)}")
    points = [(float(coords[i]), float(coords[i + 1])) for i in range(0, 8, 2)]
    cx = sum(p[0] for p in points) / 4
    cy = sum(p[1] for p in points) / 4
    points.sort(key=lambda p: math.atan2(p[1] - cy, p[0] - cx))
    start = min(range(4), key=lambda i: (points[i][0] + points[i][1], points[i][1]))
    return [v for p in points[start:] + points[:start] for v in p]
