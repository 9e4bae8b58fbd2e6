"""Dataset statistics in the shape of paper §5: annotations per type (Table 2), texts per granularity with
their length and semantic coverage (Table 3), and region sizes. Split by source (human, each specialist) when
a corpus mixes them, so one can see what the data engine added. `f2lightning stats` prints and writes them.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import replace
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from f2lightning.data.schema import GRANULARITIES, Record, source_of
from f2lightning.engine.text_analysis import (
    DEFAULT_PIPELINE,
    INSTALL_ENGINE,
    EngineDependencyError,
    TextAnalysis,
    analyze,
)

if TYPE_CHECKING:
    from spacy.tokens import Doc

# Table 2's rows: key in the JSON -> row title. A region counts as one region-text pair whatever texts it
# holds; groundings are counted twice, as texts and as their grounded phrases.
ANNOTATION_TYPES = {
    **{f"text_{g}": f"Text ({g.replace('_', ' ')})" for g in GRANULARITIES},
    "region_text": "Region-text pairs",
    "grounding_text": "Text-phrase-region: texts",
    "grounding_phrase": "Text-phrase-region: phrases",
    "ocr": "OCR lines",
    "vqa": "VQA pairs",
}
# Table 3's semantic coverage, from the parse: key in the JSON -> column title.
SEMANTIC_COLUMNS = {
    "mean_nouns": "Mean nouns",
    "mean_verbs": "Mean verbs",
    "mean_adjectives": "Mean adjectives",
}
# Region area as a fraction of the image in fixed bins (the last includes 1): from tiny parts to whole images.
AREA_BINS = (0.0, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0)
HUMAN = "human"  # the source label of annotations without a `source`
NO_PARSER = (
    f"no spaCy parser given; install spaCy ({INSTALL_ENGINE}) and its English pipeline "
    f"(python -m spacy download {DEFAULT_PIPELINE})"
)
FIGURES = ("text_lengths.png", "region_areas.png", "regions_per_image.png")


def dataset_statistics(
    records: Iterable[Record],
    parse: Callable[[str], Doc] | None = None,
    *,
    no_parse_reason: str = NO_PARSER,
) -> dict[str, Any]:
    """Table 2, Table 3 and region sizes of `records` as a JSON-ready dict.

    Images are counted once however many records name them. `per_image` is annotations per image *that has
    that type*. With `parse` (a spaCy pipeline or any text -> parsed `Doc`), Table 3 also gets the mean
    nouns (incl. proper nouns), verbs and adjectives per text; without it those columns are left out and
    `notes` says why (`no_parse_reason`) and what to install.
    """
    records = list(records)
    analyses: dict[str, TextAnalysis] = {}

    def analysis(text: str) -> TextAnalysis:
        if text not in analyses:  # a caption repeated across records or sources is parsed once
            analyses[text] = analyze(parse(text))
        return analyses[text]

    of_text = analysis if parse is not None else None
    stats = _statistics(records, of_text)
    sources = _sources(records)
    if len(sources) > 1:
        stats["by_source"] = {
            HUMAN if source is None else source: _statistics(_of_source(records, source), of_text)
            for source in sources
        }
    stats["semantics"] = parse is not None
    stats["notes"] = [] if parse is not None else [f"semantic columns left out: {no_parse_reason}"]
    return stats


def _statistics(records: list[Record], analysis: Callable[[str], TextAnalysis] | None) -> dict[str, Any]:
    images: dict[str, set[str]] = {key: set() for key in ANNOTATION_TYPES}
    counts: Counter = Counter()
    regions_per_image: Counter = Counter()
    areas = []
    for record in records:
        found = {f"text_{g}": len(record.texts.get(g, [])) for g in GRANULARITIES}
        found |= {
            "region_text": len(record.regions),
            "grounding_text": len(record.groundings),
            "grounding_phrase": sum(len(g.phrases) for g in record.groundings),
            "ocr": len(record.ocr),
            "vqa": len(record.vqa),
        }
        for key, n in found.items():
            if n:
                images[key].add(record.image)
                counts[key] += n
        regions_per_image[record.image] += len(record.regions)  # also the set of distinct images
        image_area = record.width * record.height
        areas.extend((r.box[2] - r.box[0]) * (r.box[3] - r.box[1]) / image_area for r in record.regions)
    table2 = {
        key: {
            "images": len(images[key]),
            "annotations": counts[key],
            "per_image": counts[key] / len(images[key]) if images[key] else 0.0,
        }
        for key in ANNOTATION_TYPES
    }
    histogram, _ = np.histogram(areas, bins=AREA_BINS)
    return {
        "images": len(regions_per_image),
        "annotations": table2,
        "texts": _texts(records, analysis),
        "regions": {
            "count": len(areas),
            "mean_relative_area": float(np.mean(areas)) if areas else None,
            "area_histogram": {"edges": list(AREA_BINS), "counts": histogram.tolist()},
            "per_image_counts": _sorted_counts(Counter(regions_per_image.values())),
        },
    }


def _texts(records: list[Record], analysis: Callable[[str], TextAnalysis] | None) -> dict[str, Any]:
    """Table 3: per granularity that has texts, their number, mean length in words and length distribution."""
    table3 = {}
    for granularity in GRANULARITIES:
        texts = [text for record in records for text in record.texts.get(granularity, [])]
        if not texts:
            continue
        lengths = [len(text.split()) for text in texts]
        row: dict[str, Any] = {"texts": len(texts), "mean_words": float(np.mean(lengths))}
        if analysis is not None:
            parsed = [analysis(text) for text in texts]
            row["mean_nouns"] = float(np.mean([a.nouns for a in parsed]))
            row["mean_verbs"] = float(np.mean([a.verbs for a in parsed]))
            row["mean_adjectives"] = float(np.mean([a.adjectives for a in parsed]))
        row["length_counts"] = _sorted_counts(Counter(lengths))
        table3[granularity] = row
    return table3


def _sorted_counts(counter: Counter) -> dict[str, int]:
    """A value -> count distribution with JSON's string keys, in increasing value."""
    return {str(value): counter[value] for value in sorted(counter)}


def _sources(records: list[Record]) -> list[str | None]:
    """Every source in the records, human (None) first. VQA pairs carry no source: they are human."""
    found: set[str | None] = set()
    for record in records:
        found.update(source_of(t) for texts in record.texts.values() for t in texts)
        found.update(source_of(a) for a in (*record.regions, *record.groundings, *record.ocr))
        if record.vqa:
            found.add(None)
    return sorted(found, key=lambda source: (source is not None, source or ""))


def _of_source(records: list[Record], source: str | None) -> list[Record]:
    """The records cut down to the annotations of one source; records with none of them left out."""
    out = []
    for record in records:
        texts = {g: [t for t in texts if source_of(t) == source] for g, texts in record.texts.items()}
        cut = replace(
            record,
            texts={g: kept for g, kept in texts.items() if kept},
            regions=[r for r in record.regions if source_of(r) == source],
            groundings=[g for g in record.groundings if source_of(g) == source],
            ocr=[o for o in record.ocr if source_of(o) == source],
            vqa=record.vqa if source is None else [],
        )
        if cut.texts or cut.regions or cut.groundings or cut.ocr or cut.vqa:
            out.append(cut)
    return out


def statistics_markdown(stats: dict[str, Any]) -> str:
    """The statistics as Markdown tables in the paper's shape; with several sources, the same tables again with
    a column (Table 2) or rows (Table 3, region sizes) per source."""
    lines = [
        "## Annotations (paper Table 2)",
        "",
        f"{stats['images']} image(s).",
        "",
        "| Annotation type | Images | Annotations | Annotations per image |",
        "|---|---:|---:|---:|",
    ]
    for key, title in ANNOTATION_TYPES.items():
        row = stats["annotations"][key]
        lines.append(f"| {title} | {row['images']} | {row['annotations']} | {row['per_image']:.2f} |")
    lines += ["", "## Texts (paper Table 3)", "", *_texts_table(stats["texts"])]
    lines += ["", "## Region sizes", "", *_regions_table(stats["regions"])]
    by_source = stats.get("by_source", {})
    if by_source:
        lines += [
            "",
            "## Annotations by source (annotations, and images in parentheses)",
            "",
            "| Annotation type | " + " | ".join(by_source) + " |",
            "|---|" + "---:|" * len(by_source),
        ]
        for key, title in ANNOTATION_TYPES.items():
            counts = [part["annotations"][key] for part in by_source.values()]
            cells = [f"{c['annotations']} ({c['images']})" if c["annotations"] else "0" for c in counts]
            lines.append(f"| {title} | " + " | ".join(cells) + " |")
        texts = {(source, g): row for source, part in by_source.items() for g, row in part["texts"].items()}
        lines += ["", "## Texts by source", "", *_texts_table(texts)]
        lines += [
            "",
            "## Region sizes by source",
            "",
            "| Source | Regions | Mean relative area |",
            "|---|---:|---:|",
        ]
        for source, part in by_source.items():
            mean = part["regions"]["mean_relative_area"]
            lines.append(
                f"| {source} | {part['regions']['count']} | {'-' if mean is None else f'{mean:.4f}'} |"
            )
    if stats["notes"]:
        lines += ["", *(f"Note: {note}" for note in stats["notes"])]
    return "\n".join(lines) + "\n"


def _texts_table(texts: dict[Any, dict[str, Any]]) -> list[str]:
    """Table 3's rows, keyed by granularity or by (source, granularity)."""
    if not texts:
        return ["No texts."]
    keys = ["Source", "Granularity"] if isinstance(next(iter(texts)), tuple) else ["Granularity"]
    semantic = [key for key in SEMANTIC_COLUMNS if key in next(iter(texts.values()))]
    header = [*keys, "Texts", "Mean words", *(SEMANTIC_COLUMNS[key] for key in semantic)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(keys) + "---:|" * (len(header) - len(keys))]
    for key, row in texts.items():
        names = key if isinstance(key, tuple) else (key,)
        cells = [*names[:-1], names[-1].replace("_", " "), str(row["texts"]), f"{row['mean_words']:.2f}"]
        cells += [f"{row[column]:.2f}" for column in semantic]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _regions_table(regions: dict[str, Any]) -> list[str]:
    if not regions["count"]:
        return ["No regions."]
    lines = [
        f"{regions['count']} region(s); mean area relative to the image: {regions['mean_relative_area']:.4f}.",
        "",
        "| Relative area | Regions |",
        "|---|---:|",
    ]
    names = _bin_names(regions["area_histogram"]["edges"])
    return lines + [f"| {name} | {n} |" for name, n in zip(names, regions["area_histogram"]["counts"])]


def _bin_names(edges: list[float]) -> list[str]:
    return [f"{lo:g}–{hi:g}" for lo, hi in pairwise(edges)]


def write_statistics(stats: dict[str, Any], out_dir: str | os.PathLike) -> list[Path]:
    """Write `statistics.json`, `statistics.md` and the histograms (`FIGURES`); returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "statistics.json", out / "statistics.md"]
    written[0].write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    written[1].write_text(statistics_markdown(stats), encoding="utf-8")
    texts, regions = stats["texts"], stats["regions"]
    lengths = {g: {int(k): n for k, n in row["length_counts"].items()} for g, row in texts.items()}
    areas = dict(zip(_bin_names(regions["area_histogram"]["edges"]), regions["area_histogram"]["counts"]))
    figures = {
        "text_lengths.png": ("Text length", "words", "texts", lengths),
        "region_areas.png": ("Region area relative to the image", "relative area", "regions", {"": areas}),
        "regions_per_image.png": (
            "Regions per image",
            "regions",
            "images",
            {"": {int(k): n for k, n in regions["per_image_counts"].items()}},
        ),
    }
    for name, (title, x_label, y_label, series) in figures.items():
        _bar_chart(out / name, title, x_label, y_label, series)
        written.append(out / name)
    return written


def _bar_chart(path: Path, title: str, x_label: str, y_label: str, series: dict[str, dict[Any, int]]) -> None:
    """Bars of one or more labelled distributions (value -> count) side by side. Drawn on a bare Agg canvas:
    no pyplot, so no global backend is switched and no window can open."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise EngineDependencyError(f"the histograms need matplotlib: {INSTALL_ENGINE}") from error
    figure = Figure(figsize=(7, 4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.set(title=title, xlabel=x_label, ylabel=y_label)
    if not any(sum(counts.values()) for counts in series.values()):
        axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)
    width = 0.8 / max(len(series), 1)
    for n, (label, counts) in enumerate(series.items()):
        if all(isinstance(value, int) for value in counts):  # numbers: bars at their values
            positions = [value + (n - (len(series) - 1) / 2) * width for value in counts]
        else:  # bin names: bars at their ranks, named below
            positions = list(range(len(counts)))
            axes.set_xticks(positions, list(counts), rotation=30)
        axes.bar(positions, list(counts.values()), width=width, label=label or None)
    if len(series) > 1:
        axes.legend()
    figure.savefig(path, dpi=100)
