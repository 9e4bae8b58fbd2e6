"""Image decoding that never surprises: EXIF orientation, every Pillow mode, bounded size."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Pillow's own guard against decompression bombs; raised to an error (not a warning) in `load_image`.
MAX_IMAGE_PIXELS = 89_478_485


class BadImageError(ValueError):
    """An image that cannot be used; the message names the file, `reason` is the short key skips are counted by
    (`missing_image`, `image_too_large`, `undecodable_image`, `size_mismatch`)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode → 8-bit RGB, upright according to EXIF."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16/32-bit greyscale: stretch the actual value range to 0..255 instead of clipping at 255.
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
        image = Image.fromarray(scaled.astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels become white rather than whatever colour their hidden RGB happens to hold.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """Decode a file to upright RGB, raising `BadImageError` that names the file on any problem."""
    return _decode(Path(path), path)


def upright_size(path: str | Path) -> tuple[int, int]:
    """`(width, height)` of a file as `load_image` gives it (EXIF rotations of 90° swap the sides), read from
    the header without decoding the pixels; `BadImageError` when it cannot be opened."""
    try:
        with Image.open(path) as image:
            # EXIF orientations 5-8 are the transposes and quarter turns: exif_transpose swaps width and height.
            turned = image.getexif().get(0x0112) in (5, 6, 7, 8)
            return (image.height, image.width) if turned else image.size
    except FileNotFoundError:
        raise BadImageError(f"{path}: file not found", "missing_image") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise BadImageError(f"{path}: cannot read image ({error})", "undecodable_image") from error


def load_image_bytes(data: bytes | memoryview, name: str) -> Image.Image:
    """Decode an encoded image held in memory (e.g. read from a shard); errors name `name`, its source file."""
    return _decode(io.BytesIO(data), name)


def _decode(source: Path | io.BytesIO, path: str | Path) -> Image.Image:
    try:
        with Image.open(source) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise BadImageError(
                    f"{path}: {image.width}x{image.height} exceeds the {MAX_IMAGE_PIXELS}-pixel decompression-bomb limit",
                    "image_too_large",
                )
            image.load()
            return to_rgb(image)
    except BadImageError:
        raise
    except FileNotFoundError:
        raise BadImageError(f"{path}: file not found", "missing_image") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise BadImageError(f"{path}: cannot decode image ({error})", "undecodable_image") from error
