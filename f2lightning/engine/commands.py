"""The data engine's commands: ``annotate`` (specialists, paper §4.2.1), ``filter`` (§4.2.2), ``refine`` (the
rounds of §4.2.3) and ``stats`` (the paper's Tables 2-3)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from f2lightning.data.records import read_records, write_records
from f2lightning.data.schema import Record
from f2lightning.data.skips import SkipReport
from f2lightning.engine.filters import RegionFilter, TextFilter, filter_records
from f2lightning.engine.stats import dataset_statistics, statistics_markdown, write_statistics
from f2lightning.engine.text_analysis import DEFAULT_PIPELINE, EngineDependencyError, load_pipeline


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    _register_annotate(subparsers)
    refine = subparsers.add_parser(
        "refine",
        help="rounds of annotate -> filter -> merge -> train -> test (paper §4.2.3), resumable",
        description="Iterative data refinement from a refine config (docs/data_engine.md, "
        "f2lightning/engine/refine.py); each round's records, model, report and metrics in its own folder.",
    )
    refine.add_argument("-c", "--config", required=True, help="refine config (YAML)")
    refine.set_defaults(func=run_refine)
    texts, regions = TextFilter(), RegionFilter()
    parser = subparsers.add_parser(
        "filter",
        help="drop noisy generated texts, regions and groundings (paper §4.2.2); writes OUT, OUT.report.json",
        description="Filter generated annotations of record files into one record file; human ones are kept. "
        "Every dropped annotation is counted by reason in OUT.report.json (see docs/data_engine.md).",
    )
    parser.add_argument("records", nargs="+", help="record JSONL files")
    parser.add_argument("-o", "--output", required=True, help="output .jsonl")
    group = parser.add_argument_group("text filter (needs spaCy and its English pipeline)")
    group.add_argument(
        "--no-text-filter", action="store_true", help="keep every text (spaCy is then not needed)"
    )
    group.add_argument(
        "--max-objects",
        type=int,
        default=texts.max_objects,
        help="most objects in a brief text (%(default)s)",
    )
    group.add_argument(
        "--max-objects-detailed",
        type=int,
        default=texts.max_objects_detailed,
        help="most objects in a detailed text (%(default)s)",
    )
    group.add_argument(
        "--max-objects-more-detailed",
        type=int,
        default=texts.max_objects_more_detailed,
        help="most objects in a more detailed text (%(default)s)",
    )
    group.add_argument(
        "--min-complexity",
        type=int,
        default=texts.min_complexity,
        help="least node degree of a text's most connected object or action (%(default)s)",
    )
    group.add_argument("--include-human", action="store_true", help="filter human texts as well")
    group.add_argument("--spacy-model", default=DEFAULT_PIPELINE, help="spaCy pipeline (%(default)s)")
    group = parser.add_argument_group("region and grounding filter")
    group.add_argument(
        "--min-score", type=float, default=regions.min_score, help="least region score (%(default)s)"
    )
    group.add_argument(
        "--nms-iou",
        type=float,
        default=regions.nms_iou,
        help="IoU above which a same-label region is a duplicate; 1 turns NMS off (%(default)s)",
    )
    group.add_argument(
        "--min-phrase-score",
        type=float,
        default=regions.min_phrase_score,
        help="least grounding score (%(default)s)",
    )
    parser.add_argument(
        "--on-bad-sample", choices=["skip", "raise"], default="skip", help="for unreadable lines"
    )
    parser.set_defaults(func=run_filter)

    stats = subparsers.add_parser(
        "stats",
        help="dataset statistics in the paper's shape (Tables 2-3, region sizes): prints and writes them",
        description="Write statistics.json, statistics.md and histogram PNGs of record files to DIR.",
    )
    stats.add_argument("records", nargs="+", help="record JSONL files")
    stats.add_argument("-o", "--output", required=True, help="output folder")
    semantics = stats.add_mutually_exclusive_group()
    semantics.add_argument(
        "--spacy-model",
        default=DEFAULT_PIPELINE,
        help="spaCy pipeline for nouns / verbs / adjectives (%(default)s)",
    )
    semantics.add_argument("--no-semantics", action="store_true", help="leave the spaCy columns out")
    stats.add_argument(
        "--on-bad-sample", choices=["skip", "raise"], default="skip", help="for unreadable lines"
    )
    stats.set_defaults(func=run_stats)


def _read(paths: list[str], on_bad_sample: str, report: SkipReport) -> list[Record]:
    return [r for path in paths for r in read_records(path, on_bad_sample=on_bad_sample, report=report)]


def _annotations(records: list[Record]) -> int:
    return sum(
        sum(len(t) for t in r.texts.values()) + len(r.regions) + len(r.groundings) + len(r.ocr) + len(r.vqa)
        for r in records
    )


def run_filter(args: argparse.Namespace) -> int:
    """Exit status 2 with a one-line message when spaCy or its pipeline is missing: the message says what to
    install, which a traceback would bury. The pipeline is loaded before any record is read."""
    text_filter = None
    if not args.no_text_filter:
        try:
            parse = load_pipeline(args.spacy_model)
        except EngineDependencyError as error:
            print(f"f2lightning filter: error: {error} (or pass --no-text-filter)", file=sys.stderr)
            return 2
        text_filter = TextFilter(
            max_objects=args.max_objects,
            max_objects_detailed=args.max_objects_detailed,
            max_objects_more_detailed=args.max_objects_more_detailed,
            min_complexity=args.min_complexity,
            include_human=args.include_human,
            spacy_model=args.spacy_model,
            parse=parse,
        )
    region_filter = RegionFilter(
        min_score=args.min_score, nms_iou=args.nms_iou, min_phrase_score=args.min_phrase_score
    )
    report = SkipReport()
    records = _read(args.records, args.on_bad_sample, report)
    filtered = filter_records(records, text_filter, region_filter, report)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    for record in filtered:  # image paths relative to the output, so the pair can move together
        record.image = os.path.relpath(os.path.abspath(record.image), out.parent.resolve())
    write_records(filtered, out)
    report_path = out.with_suffix(".report.json")
    report.write(report_path)
    print(
        f"filter: {len(filtered)} record(s), kept {_annotations(filtered)} of {_annotations(records)} "
        f"annotations, {report}; wrote {out} and {report_path}"
    )
    return 0


def run_stats(args: argparse.Namespace) -> int:
    """A missing spaCy or pipeline leaves the semantic columns out with a note: the counts need neither."""

    parse, reason = None, "--no-semantics was given"
    if not args.no_semantics:
        try:
            parse = load_pipeline(args.spacy_model)
        except EngineDependencyError as error:
            reason = str(error)
    report = SkipReport()
    records = _read(args.records, args.on_bad_sample, report)
    stats = dataset_statistics(records, parse, no_parse_reason=reason)
    if report.total:
        stats["notes"].append(f"records not read: {report}")
    try:
        written = write_statistics(stats, args.output)
    except EngineDependencyError as error:
        print(f"f2lightning stats: error: {error}", file=sys.stderr)
        return 2
    print(statistics_markdown(stats), end="")  # its last lines are the notes
    print(f"wrote {', '.join(str(path) for path in written)}")
    return 0


def _register_annotate(subparsers: argparse._SubParsersAction) -> None:
    from f2lightning.inference.commands import add_generation_arguments

    parser = subparsers.add_parser(
        "annotate",
        help="annotate images with specialists (Florence-2 checkpoints, an MMDetection detector) into records",
        description="Run specialists over images or record files and write merged records: the inputs' own "
        "annotations are kept, generated ones carry `source` and `score`. Re-running continues where it stopped.",
    )
    parser.add_argument("inputs", nargs="+", help="record JSONL files, image files, folders or glob patterns")
    parser.add_argument(
        "-o", "--output", required=True, help="output .jsonl (answers are kept in OUTPUT.parts/)"
    )
    parser.add_argument(
        "--task", action="append", default=[], help="a task the --checkpoint annotates (repeat; in this order): "
        "captions, <OD>, <DENSE_REGION_CAPTION>, <REGION_PROPOSAL>, <OCR_WITH_REGION>, "
        "<CAPTION_TO_PHRASE_GROUNDING> (grounds the brief captions), <REGION_TO_SEGMENTATION> (polygons of boxes)",
    )  # fmt: skip
    parser.add_argument("--source", default=None, help="provenance of the checkpoint's annotations")
    parser.add_argument(
        "--backend", choices=["local", "ray"], default="local", help="ray: a Ray Data actor pool"
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="Ray actors (one model each; one GPU each on CUDA)"
    )
    detector = parser.add_argument_group("MMDetection specialist (runs first: later tasks see its regions)")
    detector.add_argument("--mmdet-config", default=None, help="MMDetection config file")
    detector.add_argument("--mmdet-checkpoint", default=None, help="its weights")
    detector.add_argument(
        "--mmdet-score", type=float, default=0.3, help="least detection score (%(default)s)"
    )
    add_generation_arguments(parser, checkpoint_required=False)
    parser.set_defaults(func=run_annotate)


def run_annotate(args: argparse.Namespace) -> int:
    """Exit status 2 with a one-line message for a command line that names no specialist, inputs that name
    nothing, or tasks annotate cannot give an input to."""
    from f2lightning.engine.annotate import Florence2Specialist, MMDetSpecialist, annotate, input_records
    from f2lightning.inference.commands import generation_settings

    def fail(message: object) -> int:
        print(f"f2lightning annotate: error: {message}", file=sys.stderr)
        return 2

    if bool(args.mmdet_config) != bool(args.mmdet_checkpoint):
        return fail("--mmdet-config and --mmdet-checkpoint go together")
    if bool(args.checkpoint) != bool(args.task):
        return fail("--checkpoint and --task go together: name the tasks the checkpoint annotates")
    if not (args.checkpoint or args.mmdet_config):
        return fail(
            "no specialist: give --checkpoint with --task, and/or --mmdet-config with --mmdet-checkpoint"
        )
    settings = generation_settings(args)
    specialists: list = []
    try:
        if args.mmdet_config:
            specialists.append(
                MMDetSpecialist(args.mmdet_config, args.mmdet_checkpoint, args.mmdet_score, settings.device)
            )
        if args.checkpoint:
            specialists.append(
                Florence2Specialist(
                    args.checkpoint,
                    args.task,
                    settings,
                    args.source,
                    args.tokenizer,
                    args.image_size,
                    args.backend,
                    args.workers,
                )
            )
        read = SkipReport()
        records = input_records(args.inputs, read)
    except (FileNotFoundError, ValueError, KeyError) as error:
        return fail(error.args[0] if isinstance(error, KeyError) else error)
    records, skipped, dropped = annotate(records, specialists, args.output)
    for reason, count in read.dropped.items():
        skipped.drop(reason, count)
    print(f"annotate: wrote {args.output}: {len(records)} record(s), {_annotations(records)} annotations; "
          f"inputs / images skipped: {skipped}; answers a record cannot hold: {dropped}")  # fmt: skip
    return 0


def run_refine(args: argparse.Namespace) -> int:
    from f2lightning.engine.refine import RefineConfig, refine

    try:
        config = RefineConfig.load(args.config)
    except (OSError, ValueError, KeyError, TypeError) as error:
        print(f"f2lightning refine: error: {error}", file=sys.stderr)
        return 2
    for k, metrics in enumerate(refine(config)):
        shown = ", ".join(f"{name} {value:.3f}" for name, value in sorted(metrics.items()))
        print(f"round {k}: {shown}")
    return 0
