"""Mask tracing and orientation helpers."""

from __future__ import annotations

import numpy as np

from f2lightning.geometry import clockwise_polygon, mask_to_polygons, signed_area


def test_orientation() -> None:
    square = [0, 0, 1, 0, 1, 1, 0, 1]  # top-left, top-right, bottom-right: clockwise on screen
    assert signed_area(square) == 1
    counter = [0, 0, 0, 1, 1, 1, 1, 0]
    assert clockwise_polygon(counter) == [0, 0, 1, 0, 1, 1, 0, 1]
    assert clockwise_polygon(square) == square


def test_trace_exact_boundaries() -> None:
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:8] = True
    assert mask_to_polygons(mask) == [[3, 2, 8, 2, 8, 5, 3, 5]]


def test_holes_dropped_and_diagonal_pixels_are_separate_parts() -> None:
    mask = np.zeros((10, 10), bool)
    mask[1:9, 1:9] = True
    mask[4:6, 4:6] = False  # a hole: dropped
    mask[0, 0] = True  # touches the square only at a corner: its own part
    polygons = mask_to_polygons(mask, tolerance=0, min_area=0)
    assert polygons == [[0, 0, 1, 0, 1, 1, 0, 1], [1, 1, 9, 1, 9, 9, 1, 9]]
    assert all(signed_area(p) > 0 for p in polygons)


def test_simplified_circle_keeps_its_area() -> None:
    yy, xx = np.mgrid[:100, :100]
    disk = (xx - 50) ** 2 + (yy - 40) ** 2 < 30**2
    (polygon,) = mask_to_polygons(disk)
    assert len(polygon) // 2 < 40  # staircase simplified
    assert abs(signed_area(polygon) - disk.sum()) / disk.sum() < 0.03


def test_empty_mask() -> None:
    assert mask_to_polygons(np.zeros((5, 5), bool)) == []
