"""Multitask data: the per-image record schema, JSONL reading, task expansion, converters and the
synthetic dataset."""

from f2lightning.data.expand import ALL_TASKS, Sample, TaskAnnotation, expand, task_annotations
from f2lightning.data.records import read_records, write_records
from f2lightning.data.schema import BadRecordError, Grounding, OcrLine, Phrase, Record, Region, VqaPair
from f2lightning.data.skips import SkipReport
from f2lightning.data.synthetic import SyntheticConfig, make_synthetic, render_scene

__all__ = [
    "ALL_TASKS",
    "BadRecordError",
    "Grounding",
    "OcrLine",
    "Phrase",
    "Record",
    "Region",
    "Sample",
    "SkipReport",
    "SyntheticConfig",
    "TaskAnnotation",
    "VqaPair",
    "expand",
    "make_synthetic",
    "read_records",
    "render_scene",
    "task_annotations",
    "write_records",
]
