"""Geometry of boxes, quads and polygons: one module for the task language, the converters and the synthetic data.

Coordinates are image pixels with y pointing *down*. "Clockwise" means clockwise as seen on screen, which in
these coordinates is a *positive* shoelace area (the opposite sign of the usual y-up convention): the corners
top-left (0, 0) → top-right (1, 0) → bottom-right (1, 1) → bottom-left (0, 1) have area +1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


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


def box_quad(box: Sequence[float]) -> list[float]:
    """Axis-aligned box ``[x0, y0, x1, y1]`` as a quad clockwise from its top-left corner."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def bounding_box(flat: Sequence[float]) -> list[float]:
    """``[x0, y0, x1, y1]`` enclosing a flat point list (polygon or quad)."""
    xs, ys = flat[0::2], flat[1::2]
    return [float(min(xs)), float(min(ys)), float(max(xs)), float(max(ys))]


def clip_points(flat: Sequence[float], width: float, height: float) -> list[float]:
    """Clamp a flat point list (box, quad or polygon) into the image; annotations in public
    datasets overshoot the border by rounding, which the schema would otherwise reject."""
    out = []
    for i, v in enumerate(flat):
        limit = width if i % 2 == 0 else height
        out.append(min(max(float(v), 0.0), float(limit)))
    return out


def mask_to_polygons(mask: np.ndarray, tolerance: float = 1.0, min_area: float = 4.0) -> list[list[float]]:
    """Outer boundaries of a binary mask as clockwise flat polygons (holes are dropped, as
    Florence-2 polygons cannot express them).

    Pure numpy instead of OpenCV's findContours: the boundary is traced along pixel *edges*
    (so a single pixel is a 1x1 square, exactly the area COCO counts), diagonal neighbours are
    separate parts (4-connectivity), and staircases are then simplified with Douglas-Peucker at
    ``tolerance`` pixels. Parts smaller than ``min_area`` square pixels are dropped.
    """
    m = np.pad(np.asarray(mask, dtype=bool), 1)
    # Directed edges with the foreground on the right of the direction of travel, which makes
    # outer rings clockwise (positive area) and hole rings counter-clockwise.
    outgoing: dict[tuple[int, int], list[tuple[int, int]]] = {}
    fg = m[1:-1, 1:-1]
    sides = [  # (neighbour is background, edge start offset (x, y), direction)
        (~m[:-2, 1:-1], (0, 0), (1, 0)),  # top edge, heading east
        (~m[1:-1, 2:], (1, 0), (0, 1)),  # right edge, heading south
        (~m[2:, 1:-1], (1, 1), (-1, 0)),  # bottom edge, heading west
        (~m[1:-1, :-2], (0, 1), (0, -1)),  # left edge, heading north
    ]
    for background, (ox, oy), direction in sides:
        rows, cols = np.nonzero(fg & background)
        for r, c in zip(rows.tolist(), cols.tolist()):
            outgoing.setdefault((c + ox, r + oy), []).append(direction)

    polygons = []
    while outgoing:
        start = next(iter(outgoing))
        first = outgoing[start][0]
        ring, vertex, heading = [], start, None
        step = first
        while True:
            outgoing[vertex].remove(step)
            if not outgoing[vertex]:
                del outgoing[vertex]
            if step != heading:
                ring.append(vertex)
            heading = step
            vertex = (vertex[0] + step[0], vertex[1] + step[1])
            choices = outgoing.get(vertex, [])
            if vertex == start:
                # the ring is closed when the turn rule would take the (consumed) first edge again
                step = _turn(heading, [*choices, first])
                if step == first:
                    break
            else:
                step = _turn(heading, choices)
        flat = [float(v) for p in _simplify(ring, tolerance) for v in p]
        if len(flat) >= 6 and signed_area(flat) >= min_area:
            polygons.append(flat)
    return polygons


def _turn(heading: tuple[int, int], choices: list[tuple[int, int]]) -> tuple[int, int]:
    """Next edge direction. Where diagonal pixels share a vertex there are two choices: turning
    right hugs the current pixel, so diagonal neighbours become separate parts."""
    dx, dy = heading
    return next(d for d in [(-dy, dx), (dx, dy), (dy, -dx)] if d in choices)


def _simplify(ring: list[tuple[int, int]], tolerance: float) -> list[tuple[int, int]]:
    """Douglas-Peucker on a closed ring, anchored at its first vertex and the vertex farthest
    from it so that the two halves are simplified as open paths."""
    if len(ring) <= 3 or tolerance <= 0:
        return ring
    pts = np.asarray(ring, dtype=float)
    far = int(np.argmax(np.hypot(*(pts - pts[0]).T)))
    first = _douglas_peucker(pts[: far + 1], tolerance)
    second = _douglas_peucker(np.vstack([pts[far:], pts[:1]]), tolerance)
    return [tuple(p) for p in np.vstack([first[:-1], second[:-1]]).astype(int).tolist()]


def _douglas_peucker(path: np.ndarray, tolerance: float) -> np.ndarray:
    keep = np.zeros(len(path), dtype=bool)
    keep[[0, -1]] = True
    stack = [(0, len(path) - 1)]
    while stack:
        a, b = stack.pop()
        if b - a < 2:
            continue
        seg = path[b] - path[a]
        rel = path[a + 1 : b] - path[a]
        length = np.hypot(*seg)
        dist = np.abs(seg[0] * rel[:, 1] - seg[1] * rel[:, 0]) / length if length else np.hypot(*rel.T)
        i = int(np.argmax(dist))
        if dist[i] > tolerance:
            keep[a + 1 + i] = True
            stack += [(a, a + 1 + i), (a + 1 + i, b)]
    return path[keep]
