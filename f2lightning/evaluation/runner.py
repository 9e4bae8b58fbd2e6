"""Run benchmarks end to end: config → public files → samples → generation → metric → results.

A benchmark config (``configs/eval/<benchmark>.yaml``)::

    benchmark: refcoco              # a name in f2lightning.evaluation.benchmarks.BENCHMARKS
    data:                           # the benchmark's files in their public format
      format: refcoco               # a record converter (f2lightning convert --help), or the kind's own reader
      refs: refcoco/refs(unc).p     # paths are relative to --data-root
      instances: refcoco/instances.json
      image_dir: coco/train2014
    splits:                         # paper column: data split (passed to converters that take `splits`)
      val: val
      test-A: testA
    metric: {}                      # options of the metric (e.g. `protocol` of phrase grounding)
    generation: {batch_size: 16}    # defaults for GenerationSettings; the command line overrides them

A split whose answers are private (`format: vqav2-questions` etc., see `answer_files`) is not scored: its answers
are written to ``<output>/answers/<benchmark>_<column>.json`` for the benchmark's evaluation server.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from f2lightning.data.converters import get_converter
from f2lightning.data.converters.base import path_parameters
from f2lightning.data.skips import SkipReport
from f2lightning.evaluation.answer_files import ANSWER_FORMATS, write_answers
from f2lightning.evaluation.benchmarks import Benchmark, get_benchmark
from f2lightning.evaluation.report import BenchmarkResult, SplitResult, write_report
from f2lightning.evaluation.samples import EvalSample
from f2lightning.inference.generation import Generation, GenerationSettings, generate
from f2lightning.inference.loading import load_model, resolve_device, use_bf16
from f2lightning.inference.results import scored_result
from f2lightning.model import Florence2
from f2lightning.processor import Florence2Processor
from f2lightning.tasks import get_task

_NEEDS_OUTPUT = "the answers are private; give an output folder (-o DIR, out_dir=) for the answers file"


@dataclass(frozen=True)
class BenchmarkConfig:
    benchmark: Benchmark
    data: dict[str, Any]
    splits: dict[str, str]  # paper column → data split
    metric: dict[str, Any] = field(default_factory=dict)
    generation: dict[str, Any] = field(default_factory=dict)
    path: str = ""


def load_config(path: str | Path) -> BenchmarkConfig:
    """Read and check one benchmark config."""
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    unknown = set(raw) - {"benchmark", "data", "splits", "metric", "generation"}
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
    for key in ("benchmark", "data", "splits"):
        if key not in raw:
            raise ValueError(f"{path}: missing `{key}`")
    benchmark = get_benchmark(raw["benchmark"])
    if not isinstance(raw["data"], dict) or "format" not in raw["data"]:
        raise ValueError(f"{path}: `data` must be a mapping with a `format` (the files' public format)")
    answer_format = ANSWER_FORMATS.get(raw["data"]["format"])
    if answer_format is not None and answer_format.task != benchmark.kind.task:
        raise ValueError(f"{path}: format {raw['data']['format']!r} holds {answer_format.task.strip('<>')} "
                         f"questions, not {benchmark.name}")  # fmt: skip
    splits = raw["splits"]
    if isinstance(splits, list):  # `[val, test]`: the data splits carry the paper's names
        splits = {str(s): str(s) for s in splits}
    # Device and precision belong to the machine, not the benchmark: only the command line sets them.
    metric = raw.get("metric") or {}
    if benchmark.kind.check_options is not None:
        try:
            benchmark.kind.check_options(metric)
        except (RuntimeError, ValueError) as error:
            raise ValueError(f"{path}: metric: {error}") from None
    known = {"batch_size", "num_beams", "max_new_tokens", "num_workers"}
    if set(raw.get("generation") or {}) - known:
        raise ValueError(f"{path}: generation accepts {sorted(known)}")
    return BenchmarkConfig(
        benchmark=benchmark,
        data=dict(raw["data"]),
        splits={str(k): str(v) for k, v in splits.items()},
        metric=dict(metric),
        generation=dict(raw.get("generation") or {}),
        path=str(path),
    )


def _answers_only(data: dict[str, Any]) -> bool:
    return data.get("format") in ANSWER_FORMATS


def load_samples(
    config: BenchmarkConfig, split: str, data_root: str | Path = "."
) -> tuple[list[EvalSample], SkipReport]:
    """The split's samples, read from the public files with the record converters (or the kind's own reader);
    for a split with private answers, its questions without targets."""
    data = dict(config.data)
    fmt = data.pop("format")
    report = SkipReport()
    kind = config.benchmark.kind
    if _answers_only(config.data):
        load = ANSWER_FORMATS[fmt].load
        return load(**_under_root(load, data, data_root)), report
    if kind.load is not None:
        return kind.load(**_under_root(kind.load, data, data_root)), report
    converter = get_converter(fmt)
    args = _under_root(converter.convert, data, data_root)
    if converter.splits:
        args["splits"] = [split]
    records = converter.convert(**args, report=report)
    return [sample for record in records for sample in kind.samples(record)], report


def _under_root(reader: Callable[..., Any], data: dict[str, Any], data_root: str | Path) -> dict[str, Any]:
    """`data`'s file and folder names (the reader's path parameters) joined to the data root."""
    paths = path_parameters(reader)
    return {k: str(Path(data_root) / v) if k in paths and isinstance(v, str) else v for k, v in data.items()}


def predictions(
    benchmark: Benchmark,
    generations: Sequence[Generation],
    samples: Sequence[EvalSample],
    processor: Florence2Processor,
) -> tuple[list[Any], int]:
    """Parsed answers, with per-box scores for detection; also how many detections fell back to a
    sequence-level score because the parser and the box scorer disagreed on the number of boxes (malformed
    output such as location tokens without a label)."""
    task = get_task(benchmark.kind.task)
    if not benchmark.kind.needs_box_scores:
        return [task.parse(g.text, s.image_size) for g, s in zip(generations, samples, strict=True)], 0
    scored = [
        scored_result(task.token, g, s.image_size, processor)
        for g, s in zip(generations, samples, strict=True)
    ]
    return [r.result for r in scored], sum(r.fell_back for r in scored)


def run_benchmark(
    model: Florence2,
    processor: Florence2Processor,
    config: BenchmarkConfig,
    settings: GenerationSettings,
    data_root: str | Path = ".",
    limit: int | None = None,
    predictions_dir: Path | None = None,
    answers_dir: Path | None = None,
) -> BenchmarkResult:
    """Score every split of one benchmark config; writes per-sample predictions when `predictions_dir` is set.

    A config with private answers needs `answers_dir`: its answers go there instead of being scored.
    """
    benchmark = config.benchmark
    answers_only = _answers_only(config.data)
    if answers_only and answers_dir is None:
        raise ValueError(f"{config.path}: {_NEEDS_OUTPUT}")
    results = []
    for column, split in config.splits.items():
        start = time.perf_counter()
        samples, report = load_samples(config, split, data_root)
        samples = samples[:limit] if limit is not None else samples
        if not samples:
            raise ValueError(f"{config.path}: split {split!r} has no samples ({report})")
        generations = generate(
            model, processor, benchmark.kind.task, samples, settings,
            with_logprobs=benchmark.kind.needs_box_scores, description=f"{benchmark.name} {column}",
        )  # fmt: skip
        preds, fallbacks = predictions(benchmark, generations, samples, processor)
        if predictions_dir is not None:
            _write_predictions(
                predictions_dir / f"{benchmark.name}_{column}.jsonl", samples, generations, preds
            )
        if answers_only:
            path = write_answers(
                answers_dir / f"{benchmark.name}_{column}.json", config.data["format"], samples, preds
            )
            results.append(SplitResult(column, split, None, {}, len(samples), time.perf_counter() - start,
                                       answers_file=str(path)))  # fmt: skip
            continue
        metrics = benchmark.kind.score(samples, preds, config.metric)
        details = {k: v for k, v in metrics.items() if k != "score"}
        if benchmark.kind.needs_box_scores:
            details["sequence_score_fallbacks"] = fallbacks
        results.append(
            SplitResult(column, split, metrics["score"], details, len(samples), time.perf_counter() - start,
                        dict(report.dropped))
        )  # fmt: skip
    return BenchmarkResult(benchmark, config.path, results)


def _write_predictions(
    path: Path, samples: Sequence[EvalSample], generations: Sequence[Generation], preds: Sequence[Any]
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for sample, generation, pred in zip(samples, generations, preds, strict=True):
            line = {"key": sample.key, "image": sample.image, "input": sample.text_input, "text": generation.text,
                    "prediction": pred}  # fmt: skip
            f.write(json.dumps(line, ensure_ascii=False) + "\n")


def evaluate(
    config_paths: Sequence[str | Path],
    checkpoint: str | Path,
    *,
    tokenizer: str | Path | None = None,
    data_root: str | Path = ".",
    device: str = "auto",
    precision: str = "auto",
    image_size: int | None = None,
    overrides: dict[str, Any] | None = None,
    limit: int | None = None,
    out_dir: str | Path | None = None,
) -> list[BenchmarkResult]:
    """Evaluate one checkpoint on several benchmark configs; `overrides` (GenerationSettings fields) win over
    each config's `generation` block. With `out_dir`, writes results.md, results.json, predictions/ and, for
    splits with private answers, answers/ (such splits need `out_dir`)."""
    configs = [load_config(path) for path in config_paths]  # fail on a bad config before loading the model
    if out_dir is None and (private := [c.path for c in configs if _answers_only(c.data)]):
        raise ValueError(f"{', '.join(private)}: {_NEEDS_OUTPUT}")
    device = resolve_device(device)
    model, processor = load_model(checkpoint, tokenizer, device, image_size)
    base = GenerationSettings(device=device, bf16=use_bf16(device, precision))
    predictions_dir = Path(out_dir) / "predictions" if out_dir is not None else None
    answers_dir = Path(out_dir) / "answers" if out_dir is not None else None
    results = []
    for config in configs:
        settings = replace(base, **{**config.generation, **(overrides or {})})
        results.append(
            run_benchmark(model, processor, config, settings, data_root, limit, predictions_dir, answers_dir)
        )
    if out_dir is not None:
        write_report(
            results, Path(out_dir), checkpoint=str(checkpoint), settings=replace(base, **(overrides or {}))
        )
    return results
