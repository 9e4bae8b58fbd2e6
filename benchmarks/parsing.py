"""Location parsers: milliseconds to parse a 1024-token `<OD>` output, ours vs the regexes they replaced.

Our parsers (`f2lightning.tasks.formats`) scan each text once. The baseline is the previous implementation,
transformers' post-processing regexes, kept here only for this comparison; transformers' own
`Florence2PostProcessor` is timed on the same texts too. Texts:

- `od`: a well-formed 1024-token `<OD>` answer (label + 4 location tokens per object), parsed by every
  location format (an OCR or polygon parser meeting detection output is what malformed generation looks like);
- `loop`: 1024 tokens of a label repeated without location tokens (a model stuck in a loop);
- then ours alone on `--long-chars` characters of garbled text (mixed text and location tokens, a run of location
  tokens without labels, text without `<`), where the baseline would take minutes.

    python -m benchmarks.parsing
"""

from __future__ import annotations

import argparse
import random
import re
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch
from transformers.models.florence2.processing_florence2 import Florence2PostProcessor

from benchmarks.common import environment, print_json, print_table
from f2lightning.tasks import parse
from f2lightning.tasks.locations import LOCATION_PATTERN, dequantize_bins, parse_bin

SIZE = (640, 480)
# Our location formats → transformers' post-processing type of the same task.
TASKS = {
    "<OD>": "description_with_bboxes",
    "<OCR_WITH_REGION>": "ocr",
    "<REGION_TO_SEGMENTATION>": "polygons",
    "<OPEN_VOCABULARY_DETECTION>": "description_with_bboxes_or_polygons",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=1024, help="tokens of the od / loop outputs")
    parser.add_argument(
        "--long-chars", type=int, default=50_000, help="characters of the garbled texts (ours only)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per text and parser (median)")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------ the baseline: the old regexes
_LABEL_END = r"(?=<od>|</od>|<box>|</box>|<bbox>|</bbox>|<loc_"
_BOX_LABEL = re.compile(r"^\s*(.*?)" + _LABEL_END + ")")
_LABELLED_BOXES = re.compile(r"([^<]+(?:<loc_\d+>){4,})")
_BOX = re.compile(r"<loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)>")
_QUAD = re.compile(r"(.+?)" + r"<loc_(\d+)>" * 8)
_POLYGON_TOKEN = r"(?:<loc_\d+>|<sep>|<poly>|</poly>)"
_LABELLED_POLYGONS = re.compile(rf"([^<]+{_POLYGON_TOKEN}{{4,}})")
_UNLABELLED_POLYGONS = re.compile(rf"{_POLYGON_TOKEN}{{4,}}")
_POLYGON_LABEL = re.compile(r"^\s*(.*?)" + _LABEL_END + "|<poly>)")
_POLYGON_GROUP = re.compile(r"<poly>(.*?)</poly>")
_POLYGON_PART = re.compile(r"((?:<loc_\d+>)+)(?:<sep>|$)")


def _decode(digits: list[str]) -> list[float]:
    return dequantize_bins([parse_bin(d) for d in digits], SIZE)


def _old_boxes(text: str) -> dict[str, list]:
    bboxes, labels = [], []
    for phrase in _LABELLED_BOXES.findall(text):
        match = _BOX_LABEL.search(phrase)
        if match:
            label = match.group().strip().encode("ascii", "ignore").decode("ascii")
            for box in _BOX.finditer(phrase):
                bboxes.append(_decode(list(box.groups())))
                labels.append(label)
    return {"bboxes": bboxes, "labels": labels}


def _old_quads(text: str) -> dict[str, list]:
    found = _QUAD.findall(text)
    return {"quad_boxes": [_decode(bins) for _, *bins in found], "labels": [c.strip() for c, *_ in found]}


def _old_polygons(phrases: list[str]) -> dict[str, list]:
    polygons, labels = [], []
    for phrase in phrases:
        match = _POLYGON_LABEL.search(re.sub(r"^<loc_\d+>", "", phrase, count=1))
        if not match:
            continue
        wrapped = "<poly>" in phrase and "</poly>" in phrase
        for obj in _POLYGON_GROUP.findall(phrase) if wrapped else [phrase]:
            parts = _POLYGON_PART.findall(obj)
            if parts:
                bins = [LOCATION_PATTERN.findall(part) for part in parts]
                polygons.append([_decode(b[: len(b) // 2 * 2]) for b in bins])
                labels.append(match.group().strip())
    return {"polygons": polygons, "labels": labels}


OLD: dict[str, Callable[[str], Any]] = {
    "<OD>": _old_boxes,
    "<OCR_WITH_REGION>": _old_quads,
    "<REGION_TO_SEGMENTATION>": lambda text: _old_polygons(_UNLABELLED_POLYGONS.findall(text)),
    "<OPEN_VOCABULARY_DETECTION>": lambda text: (
        _old_polygons(_LABELLED_POLYGONS.findall(text)) if "<poly>" in text else _old_boxes(text)
    ),
}


# ---------------------------------------------------------------------------------------------- texts
def texts(tokens: int, long_chars: int) -> tuple[dict[str, str], dict[str, str]]:
    rng = random.Random(0)

    def loc() -> str:
        return f"<loc_{rng.randrange(1000)}>"

    # Our tokenizer and Florence-2's write a short label and each location token as one token each.
    od = "<s>" + "".join("car" + "".join(loc() for _ in range(4)) for _ in range(tokens // 5)) + "</s>"
    loop = "<s>" + " a car" * (tokens // 2) + "</s>"
    pieces = [
        lambda: loc() * rng.randrange(1, 9),
        lambda: rng.choice([" a dog", "\n", "<poly>", "<sep>", " "]),
    ]
    mixed = ""
    while len(mixed) < long_chars:
        mixed += rng.choice(pieces)()
    locations = ""
    while len(locations) < long_chars:
        locations += loc()
    return {"od": od, "loop": loop}, {
        "mixed text and locations": mixed,
        "locations without labels": locations + "<poly>",
        "text without <": ("a dog " * (long_chars // 6)) + "\n",
    }


def median_ms(repeats: int, function: Callable[..., Any], *arguments: Any, **keywords: Any) -> float:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        function(*arguments, **keywords)
        seconds.append(time.perf_counter() - start)
    return 1e3 * sorted(seconds)[len(seconds) // 2]


def run(args: argparse.Namespace) -> dict[str, Any]:
    env = environment(torch.device("cpu"), False)
    # Its parse settings are those of the released processor for these formats: none (the defaults).
    reference = Florence2PostProcessor(
        {kind: {} for kind in TASKS.values()}, SimpleNamespace(all_special_tokens=["<s>", "</s>", "<pad>"])
    )
    short, long = texts(args.tokens, args.long_chars)
    rows, results = [], {}
    for name, text in short.items():
        for task, kind in TASKS.items():
            ours = median_ms(args.repeats, parse, task, text, SIZE)
            old = median_ms(args.repeats, OLD[task], text.replace("<s>", "").replace("</s>", ""))
            theirs = median_ms(args.repeats, reference, text=text, image_size=SIZE, parse_tasks=[kind])
            rows.append([name, task, ours, old, theirs, old / ours])
            results[f"{name} {task}"] = {"ours_ms": ours, "old_regexes_ms": old, "transformers_ms": theirs}
    print_table(
        f"parse time of {args.tokens}-token outputs (median of {args.repeats})",
        ["output", "parser", "ours ms", "old regexes ms", "transformers ms", "old / ours"],
        rows,
    )
    long_rows = []
    for name, text in long.items():
        for task in TASKS:
            ours = median_ms(args.repeats, parse, task, text, SIZE)
            long_rows.append([name, task, ours])
            results[f"{len(text)} chars, {name} {task}"] = {"ours_ms": ours}
    print_table(
        f"ours on {args.long_chars}-character garbled texts", ["text", "parser", "ours ms"], long_rows
    )
    result = {
        "benchmark": "parsing",
        "tokens": args.tokens,
        "long_chars": args.long_chars,
        **env,
        "ms": results,
    }
    print_json(result)
    return result


if __name__ == "__main__":
    run(parse_args())
