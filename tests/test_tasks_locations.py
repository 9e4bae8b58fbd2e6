"""Location quantization: 1000 bins, floor to encode, bin centre to decode, never `<loc_1000>`."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from f2lightning.tasks import (
    LOCATION_TOKENS,
    NUM_BINS,
    dequantize,
    format_locations,
    parse_locations,
    quantize,
)
from f2lightning.tasks.locations import dequantize_bins, quantize_coords

sizes = st.one_of(st.integers(1, 10_000), st.floats(0.5, 10_000, allow_nan=False))


def test_location_tokens():
    assert len(LOCATION_TOKENS) == NUM_BINS == 1000
    assert LOCATION_TOKENS[0] == "<loc_0>" and LOCATION_TOKENS[-1] == "<loc_999>"


@pytest.mark.parametrize(
    ("value", "size", "expected"),
    [
        (0, 640, 0),
        (640, 640, 999),  # the right border stays in the last bin
        (639.99, 640, 999),
        (1e9, 640, 999),
        (-0.001, 640, 0),
        (-500, 640, 0),
        (0.64, 640, 1),  # exactly on a bin edge: floor puts it in the upper bin
        (0.6399, 640, 0),
        (500, 1000, 500),
    ],
)
def test_quantize_edges(value, size, expected):
    assert quantize(value, size) == expected


def test_dequantize_is_bin_centre():
    assert dequantize(0, 1000) == 0.5
    assert dequantize(999, 1000) == 999.5
    assert dequantize(0, 640) == pytest.approx(0.32)
    assert dequantize(999, 480) == pytest.approx(479.76)


def test_format_never_emits_loc_1000():
    assert format_locations([640, 480, 641, 1e6], (640, 480)) == "<loc_999>" * 4
    assert format_locations([-1, -1, 0, 0], (640, 480)) == "<loc_0>" * 4


def test_coordinates_alternate_width_and_height():
    assert quantize_coords([320, 320], (640, 1280)) == [500, 250]
    assert dequantize_bins([500, 500], (640, 1280)) == pytest.approx([320.32, 640.64])


@given(k=st.integers(0, NUM_BINS - 1), size=sizes)
@settings(max_examples=200)
def test_bin_centre_quantizes_back_to_its_bin(k, size):
    assert quantize(dequantize(k, size), size) == k


@given(data=st.data(), size=sizes)
@settings(max_examples=200)
def test_round_trip_within_half_a_bin(data, size):
    value = data.draw(st.floats(0, size, allow_nan=False))
    k = quantize(value, size)
    assert 0 <= k < NUM_BINS
    assert abs(dequantize(k, size) - value) <= size / NUM_BINS / 2 * (1 + 1e-9)


@given(data=st.data(), width=sizes, height=sizes)
@settings(max_examples=100)
def test_format_then_parse(data, width, height):
    n = data.draw(st.integers(0, 8))
    coords = [data.draw(st.floats(0, (width, height)[i % 2], allow_nan=False)) for i in range(2 * n)]
    text = format_locations(coords, (width, height))
    assert text.count("<loc_") == len(coords)
    parsed = parse_locations(f"<s>junk{text}</s>", (width, height))
    for i, (a, b) in enumerate(zip(parsed, coords)):
        assert abs(a - b) <= (width, height)[i % 2] / NUM_BINS


def test_parse_locations_survives_absurd_numbers():
    text = "<loc_" + "9" * 5000 + "><loc_000000000000000000007><loc_1000>"
    x, y, x2 = parse_locations(text, (1000, 1000))
    assert x > 1e15  # capped, finite
    assert y == 7.5
    assert x2 == 1000.5  # model output beyond the last bin is decoded, not invented
