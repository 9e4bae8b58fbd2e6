"""The task registry is the one source of truth: a task registered here, in the test file only, trains through
the datamodule and the module, is validated with a box metric and parses, without any project file knowing it."""

from __future__ import annotations

import math

import lightning as L
import pytest

from f2lightning.data.datamodule import Florence2DataModule
from f2lightning.data.expand import ALL_TASKS, expand
from f2lightning.data.schema import Record, Region
from f2lightning.tasks import (
    TASKS,
    Task,
    TaskAnnotation,
    UnknownTaskError,
    get_task,
    parse,
    register_task,
    task_tokens,
    unregister_task,
)
from f2lightning.tasks.formats import PARSERS
from f2lightning.training.quality import FORMAT_METRICS, BoxRecall, task_metric
from tests.helpers import training as helpers

TOKEN = "<SHAPE_BOX>"


def shape_boxes(record: Record) -> list[TaskAnnotation]:
    """Every categorised region's box, each labelled 'shape' whatever its category (a class-agnostic detector)."""
    regions = [r for r in record.regions if r.category]
    if not (record.exhaustive and regions):
        return []  # as for OD: a missing box would be taught as background
    return [TaskAnnotation(TOKEN, {"bboxes": [r.box for r in regions], "labels": ["shape"] * len(regions)})]


@pytest.fixture
def shape_task():
    task = register_task(
        Task(TOKEN, "Locate the shapes in the image.", 64, True, "boxes", producer=shape_boxes)
    )
    yield task
    unregister_task(task)  # other tests see the built-in registry only


def test_a_registered_task_joins_the_registry_order_and_leaves_it(shape_task):
    built_in = [t for t in TASKS if t != TOKEN]
    assert list(ALL_TASKS) == [*built_in, TOKEN]  # appended: the built-in tasks' dataset indices do not move
    assert get_task("shape_box") is shape_task
    unregister_task(TOKEN)
    assert TOKEN not in ALL_TASKS
    register_task(shape_task)  # for the fixture's teardown


def test_expand_uses_the_registered_producer(shape_task):
    record = Record(
        "img.png", 100, 50, regions=[Region([10, 10, 50, 40], "dog"), Region([60, 5, 90, 45], "cat")]
    )
    (sample,) = expand(record, [TOKEN])
    assert sample.prompt == "Locate the shapes in the image."
    assert parse(TOKEN, sample.target, (100, 50))["labels"] == ["shape", "shape"]
    assert TOKEN in {s.task for s in expand(record)}  # all tasks: the new one included


def test_a_new_location_task_trains_validates_and_parses(shape_task, tmp_path):
    L.seed_everything(0)
    dm = Florence2DataModule(
        synthetic_dir=str(tmp_path / "data"), synthetic_images=24, tokenizer_vocab_size=600, image_size=64,
        batch_size=4, epoch_length=12, num_workers=0, tasks=[TOKEN, "<OD>"], val_samples_per_task=4,
    )  # fmt: skip
    lit = helpers.module()
    trainer = helpers.trainer(tmp_path, max_steps=3, limit_val_batches=None)
    seen: list[str] = []

    class RecordTasks(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            assert math.isfinite(float(outputs["loss"]))
            seen.extend(batch["task"])

    trainer.callbacks.append(RecordTasks())
    trainer.fit(lit, dm)
    assert trainer.global_step == 3 and TOKEN in seen
    metrics = trainer.validate(lit, dm, verbose=False)[0]
    # scored as boxes because of its output format (a dict reaching text scoring once crashed validation)
    assert 0.0 <= metrics["val/SHAPE_BOX/box_recall@0.5"] <= 1.0
    assert "val/OD/box_recall@0.5" in metrics

    sample = next(s for s in dm.val_dataset.flat if s.task == TOKEN)
    parsed = shape_task.parse(sample.target, sample.image_size)
    assert (
        parsed["labels"] and set(parsed["labels"]) == {"shape"} and all(len(b) == 4 for b in parsed["bboxes"])
    )
    assert parse(TOKEN, "shape<loc_0><loc_0><loc_999><loc_999>", (100, 50)) == {
        "bboxes": [pytest.approx([0.05, 0.025, 99.95, 49.975])], "labels": ["shape"],
    }  # fmt: skip


def test_the_validation_metric_follows_the_output_format(shape_task):
    assert set(FORMAT_METRICS) == set(PARSERS)  # a format added to formats.py needs its metric here
    assert task_metric(TOKEN) == task_metric("<OD>") == BoxRecall()
    assert task_metric("<REGION_PROPOSAL>") == BoxRecall(use_labels=False)
    assert task_metric("<OCR_WITH_REGION>") == BoxRecall("quad_boxes")


def test_unknown_tasks_are_refused_in_one_place_naming_the_known_ones(shape_task, tmp_path):
    with pytest.raises(
        UnknownTaskError, match=r"unknown task\(s\) \['<A>', 'b'\]; known tasks: .*<SHAPE_BOX>"
    ):
        task_tokens(["<OD>", "b", "<A>"])
    assert task_tokens(["object_detection", TOKEN, shape_task]) == ["<OD>", TOKEN, TOKEN]
    # the datamodule's refusal is the registry's (a ValueError to configuration code, a KeyError to lookups)
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['<A>'\]"):
        Florence2DataModule(synthetic_dir=str(tmp_path / "never"), tasks=["<A>"])
    with pytest.raises(KeyError, match="<SHAPE_BOX>"):
        get_task("<A>")
    dm = Florence2DataModule(
        synthetic_dir=str(tmp_path / "never"),
        tasks=["shape_box", "<OD>"],
        task_weights={"object_detection": 1},
    )
    assert (dm.tasks, dm.task_weights) == ([TOKEN, "<OD>"], {"<OD>": 1})
