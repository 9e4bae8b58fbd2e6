"""The results of a benchmark run (`BenchmarkResult`, filled by `runner.run_benchmark`), and how they are laid
out as in the paper (benchmark / split / metric header rows, one row per model), in Markdown and JSON, with the
paper's Florence-2 numbers beside ours."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from f2lightning.evaluation.benchmarks import PAPER_ROWS, Benchmark
from f2lightning.inference.generation import GenerationSettings


@dataclass
class SplitResult:
    column: str  # the paper's column
    split: str  # the data split scored (differs from the column where the paper's split is not public)
    score: float | None  # None: the answers are private, `answers_file` holds ours for the server
    details: dict[
        str, float | str
    ]  # secondary numbers, and how they were computed (e.g. the caption tokenizer)
    num_samples: int
    seconds: float
    dropped: dict[str, int] = field(default_factory=dict)
    answers_file: str | None = None


@dataclass
class BenchmarkResult:
    benchmark: Benchmark
    config: str
    splits: list[SplitResult]


def to_markdown(results: Sequence[BenchmarkResult], ours: str = "ours") -> str:
    """A table like the paper's Tables 4–6: the paper's Florence-2 rows, then ours.

    Where we score another split than the paper's column (e.g. VQA val for test-dev), our cell names it; where
    the answers are private, it names the answers file written for the benchmark's server.
    """
    columns = [(result, split) for result in results for split in result.splits]
    groups = ["Method"]
    splits = [""]
    metrics = [""]
    for result in results:
        for i, split in enumerate(result.splits):
            groups.append(result.benchmark.title if i == 0 else "")
            metrics.append(result.benchmark.metric if i == 0 else "")
            splits.append(split.column)
    lines = [_row(groups), _row(["---"] * len(groups)), _row(splits), _row(metrics)]
    for paper_row in PAPER_ROWS:
        values = [result.benchmark.paper.get(paper_row, {}).get(split.column) for result, split in columns]
        if any(v is not None for v in values):
            lines.append(_row([paper_row, *("-" if v is None else f"{v:.1f}" for v in values)]))
    lines.append(_row([f"**{ours}**", *(_our_cell(split) for _, split in columns)]))
    notes = [f"- {r.benchmark.title}: {r.benchmark.note}" for r in results if r.benchmark.note]
    counts = ", ".join(f"{r.benchmark.title} {s.column}: {s.num_samples}" for r in results for s in r.splits)
    return "\n".join([*lines, "", f"Samples: {counts}.", *notes]) + "\n"


def _our_cell(split: SplitResult) -> str:
    if split.score is None:
        path = Path(split.answers_file)
        return f"{path.parent.name}/{path.name} (to the server)"
    return f"{split.score:.1f}" + ("" if _same_split(split) else f" ({split.split})")


def _same_split(split: SplitResult) -> bool:
    # The paper writes "test-A" where the refs files say "testA".
    return split.split.replace("-", "").lower() == split.column.replace("-", "").lower()


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def to_json(
    results: Sequence[BenchmarkResult], checkpoint: str = "", settings: GenerationSettings | None = None
) -> dict[str, Any]:
    """Everything behind the table: our number, the paper's, sample counts, timings and secondary metrics."""
    return {
        "checkpoint": checkpoint,
        "settings": asdict(settings) if settings is not None else None,
        "benchmarks": [
            {
                "name": r.benchmark.name,
                "title": r.benchmark.title,
                "metric": r.benchmark.metric,
                "task": r.benchmark.kind.task,
                "config": r.config,
                "note": r.benchmark.note,
                "splits": [
                    {
                        **asdict(s),
                        "paper": {
                            row: values[s.column]
                            for row, values in r.benchmark.paper.items()
                            if s.column in values
                        },
                    }
                    for s in r.splits
                ],
            }
            for r in results
        ],
    }


def write_report(
    results: Sequence[BenchmarkResult],
    out_dir: Path,
    checkpoint: str = "",
    settings: GenerationSettings | None = None,
) -> tuple[Path, Path]:
    """results.md and results.json under `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = out_dir / "results.md"
    markdown.write_text(
        to_markdown(results, ours=f"ours ({Path(checkpoint).name})" if checkpoint else "ours")
    )
    data = out_dir / "results.json"
    data.write_text(json.dumps(to_json(results, checkpoint, settings), indent=2) + "\n")
    return markdown, data
