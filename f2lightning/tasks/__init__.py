"""The task language of Florence-2: prompts, `<loc_*>` locations, target texts and their parsing."""

from f2lightning.tasks.locations import (
    LOCATION_TOKENS,
    NUM_BINS,
    dequantize,
    format_locations,
    parse_locations,
    quantize,
)
from f2lightning.tasks.registry import (
    TASKS,
    Producer,
    Task,
    TaskAnnotation,
    UnknownTaskError,
    get_task,
    parse,
    register_task,
    task_tokens,
    unregister_task,
)

__all__ = [
    "LOCATION_TOKENS",
    "NUM_BINS",
    "TASKS",
    "Producer",
    "Task",
    "TaskAnnotation",
    "UnknownTaskError",
    "dequantize",
    "format_locations",
    "get_task",
    "parse",
    "parse_locations",
    "quantize",
    "register_task",
    "task_tokens",
    "unregister_task",
]
