"""Prediction pictures: boxes, polygons, OCR quads and captions drawn on the image."""

from __future__ import annotations

from typing import Any

from PIL import Image, ImageDraw

PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324"]


def draw_prediction(image: Image.Image, task: str, result: Any, title: str | None = None) -> Image.Image:
    """A copy of `image` with the parsed `result` of `task` drawn on it; text results go in a caption band."""
    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    if isinstance(result, dict):
        labels = result.get("labels") or result.get("bboxes_labels") or []
        for i, box in enumerate(result.get("bboxes", [])):
            color = PALETTE[i % len(PALETTE)]
            draw.rectangle(box, outline=color, width=2)
            if i < len(labels) and labels[i]:
                draw.text((box[0] + 2, box[1] + 1), str(labels[i])[:30], fill=color)
        for i, quad in enumerate(result.get("quad_boxes", [])):
            color = PALETTE[i % len(PALETTE)]
            draw.polygon(list(zip(quad[0::2], quad[1::2], strict=False)), outline=color, width=2)
            if i < len(labels) and labels[i]:
                draw.text((quad[0], quad[1] - 10), str(labels[i])[:30], fill=color)
        for i, polygons in enumerate(result.get("polygons", [])):
            color = PALETTE[i % len(PALETTE)]
            for polygon in polygons:
                if len(polygon) >= 6:
                    draw.polygon(
                        list(zip(polygon[0::2], polygon[1::2], strict=False)), outline=color, width=2
                    )
        text = ""
    else:
        text = str(result)
    header = f"{task} {title or ''}".strip()
    return _with_caption(canvas, header + ("\n" + text if text else ""))


def _with_caption(image: Image.Image, text: str, width_chars: int = 60) -> Image.Image:
    lines = []
    for paragraph in text.splitlines():
        lines += [paragraph[i : i + width_chars] for i in range(0, max(len(paragraph), 1), width_chars)]
    band = 12 * len(lines) + 6
    out = Image.new("RGB", (image.width, image.height + band), "white")
    out.paste(image, (0, 0))
    ImageDraw.Draw(out).multiline_text((3, image.height + 3), "\n".join(lines), fill="black", spacing=2)
    return out
