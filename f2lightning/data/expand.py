"""Turn one annotation record into (task, prompt, target) training samples.

Two steps so the data rules can be tested apart from rendering: :func:`task_annotations` asks each
registered task's producer (``Task.producer``, Table 13's mapping of annotation types to tasks) which
annotations the record gives it, and :func:`expand` renders them through the task's ``build_prompt`` /
``serialize``. Both follow the task registry, so a task registered anywhere is expanded like a built-in one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from f2lightning.data.schema import Record
from f2lightning.tasks import TASKS, TaskAnnotation, get_task, task_tokens

# Every task token in the registry's (fixed, registration) order. A live view of the registry, not a copy: a task
# registered later is in it too.
ALL_TASKS = TASKS.keys()


@dataclass(frozen=True)
class Sample:
    """One training example. ``image_path`` is the record's (resolved) image; ``image_size`` is
    ``(width, height)`` of that image, the frame of every location token in prompt and target."""

    image_path: str
    task: str
    prompt: str
    target: str
    image_size: tuple[int, int]


def task_annotations(record: Record, tasks: Iterable[str] | None = None) -> list[TaskAnnotation]:
    """Every (task, inputs, annotation) the record supports, in a fixed order, restricted to ``tasks`` (task tokens
    or names) when given."""
    wanted = set(TASKS if tasks is None else task_tokens(tasks))
    # Each producer runs once, in registry order; a task keeps only what its own producer yields for it.
    producers = dict.fromkeys(
        task.producer for task in TASKS.values() if task.token in wanted and task.producer
    )
    return [
        a
        for producer in producers
        for a in producer(record)
        if a.task in wanted and TASKS[a.task].producer is producer
    ]


def expand(record: Record, tasks: Iterable[str] | None = None) -> list[Sample]:
    """The record's training samples for every task it supports (or only ``tasks``)."""
    size = record.image_size
    samples = []
    for a in task_annotations(record, tasks):
        task = get_task(a.task)
        prompt = task.build_prompt(text_input=a.text_input, region=a.region, image_size=size)
        samples.append(Sample(record.image, a.task, prompt, task.serialize(a.annotation, size), size))
    return samples


__all__ = ["ALL_TASKS", "Sample", "TaskAnnotation", "expand", "task_annotations"]
