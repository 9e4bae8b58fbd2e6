"""Bad data, numerical faults, checkpoint damage and impossible configs: each fails clearly or is counted."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image

from f2lightning.data.datamodule import Florence2DataModule
from f2lightning.data.dataset import Collator
from f2lightning.data.records import read_records
from f2lightning.data.schema import BadRecordError, Record
from f2lightning.data.skips import SkipReport
from f2lightning.images import BadImageError, load_image
from f2lightning.model import Florence2, Florence2Config
from f2lightning.model.checkpoints import CheckpointError
from f2lightning.processor import Florence2Processor
from f2lightning.training.checkpointing import AtomicCheckpointIO, find_resume_checkpoint, resume_path
from f2lightning.training.module import NonFiniteLossError
from f2lightning.training.validation import ConfigError, validate_fit
from tests.helpers import training as helpers

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthetic")
    helpers.datamodule(path).prepare_data()
    return path


def _image(path: Path, mode: str = "RGB", size=(32, 24), **save) -> Path:
    Image.new(mode, size, 128 if mode in ("L", "I;16") else (200, 30, 30)[: len(mode)] or 1).save(
        path, **save
    )
    return path


# ---------------------------------------------------------------------------- images
def test_truncated_jpeg_is_a_bad_image_naming_the_file(tmp_path):
    path = _image(tmp_path / "cut.jpg", format="JPEG")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(BadImageError, match=r"cut.jpg"):
        load_image(path)


def test_zero_byte_file_is_a_bad_image(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(BadImageError, match=r"empty.jpg: cannot decode"):
        load_image(tmp_path / "empty.jpg")


def test_png_with_jpg_extension_just_loads(tmp_path):
    image = load_image(_image(tmp_path / "really_a_png.jpg", format="PNG"))
    assert image.mode == "RGB" and image.size == (32, 24)


def test_16bit_greyscale_is_stretched_not_clipped(tmp_path):
    array = np.linspace(1000, 3000, 64 * 8, dtype=np.uint16).reshape(8, 64)
    Image.fromarray(array).save(tmp_path / "deep.png")
    pixels = np.asarray(load_image(tmp_path / "deep.png"))
    assert pixels.shape == (8, 64, 3) and pixels.min() == 0 and pixels.max() == 255


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "print.jpg")
    red, green, blue = np.asarray(load_image(tmp_path / "print.jpg"))[8, 8]
    assert red > 200 and green < 60 and blue < 60


def test_exif_rotation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    _image(tmp_path / "phone.jpg", size=(40, 20), exif=exif)
    assert load_image(tmp_path / "phone.jpg").size == (20, 40)


def test_1x1_image_trains_like_any_other(tmp_path, tokenizer):
    image = load_image(_image(tmp_path / "dot.png", size=(1, 1)))
    batch = Florence2Processor(tokenizer, image_size=64)([image], ["<CAPTION>"], targets=["a dot"])
    assert batch["pixel_values"].shape == (1, 3, 64, 64) and torch.isfinite(batch["pixel_values"]).all()


def _png_header_only(path: Path, width: int, height: int) -> Path:
    # A valid signature and IHDR declaring the size, one empty IDAT: no pixel buffer is ever allocated.
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )
    return path


def test_20000x20000_image_is_refused_as_decompression_bomb(tmp_path):
    with pytest.raises(BadImageError, match=r"bomb.png"):
        load_image(_png_header_only(tmp_path / "bomb.png", 20000, 20000))


# ---------------------------------------------------------------------------- records
RECORD = {"image": "a.jpg", "width": 100, "height": 50}


@pytest.mark.parametrize(
    ("box", "reason"),
    [
        ([10, 10, 200, 40], "box_outside_image"),
        ([60, 10, 20, 40], "bad_box"),
        ([10, float("nan"), 20, 40], "nan_coordinate"),
    ],
    ids=["outside", "inverted", "nan"],
)
def test_bad_boxes_are_rejected_with_a_reason(box, reason):
    with pytest.raises(BadRecordError) as error:
        Record.from_json({**RECORD, "regions": [{"box": box, "category": "x"}]}, "f.jsonl:3")
    assert error.value.reason == reason and "f.jsonl:3" in str(error.value)


def test_polygon_with_fewer_than_3_points_is_rejected():
    region = {"box": [10, 10, 20, 20], "category": "x", "polygons": [[10, 10, 20, 20]]}
    with pytest.raises(BadRecordError) as error:
        Record.from_json({**RECORD, "regions": [region]}, "f.jsonl:1")
    assert error.value.reason == "bad_polygon"


def test_non_utf8_line_is_counted_or_raised(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(
        json.dumps({**RECORD, "texts": {"brief": ["ok"]}}).encode() + b"\n" + b'{"image": "\xff\xfe"}\n'
    )
    report = SkipReport()
    assert len(read_records(path, "skip", report=report)) == 1
    assert report.dropped == {"not_utf8": 1}
    with pytest.raises(BadRecordError, match=r"mixed.jsonl:2: line is not valid UTF-8"):
        read_records(path, "raise")


def test_unknown_task_name_fails_before_any_data_is_read(tmp_path):
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['<NOT_A_TASK>'\]"):
        Florence2DataModule(
            synthetic_dir=str(tmp_path / "never_written"), tasks=["<CAPTION>", "<NOT_A_TASK>"]
        )
    assert not (tmp_path / "never_written").exists()


def test_overlong_prompt_and_target_are_truncated_and_still_train(tokenizer):
    processor = Florence2Processor(tokenizer, image_size=64, max_prompt_length=32, max_target_length=48)
    words = " ".join(["red circle"] * 2000)
    batch = processor([Image.new("RGB", (64, 64))], ["<VQA>"], text_inputs=[words], targets=[words])
    assert batch["input_ids"].shape[1] == 32 and batch["labels"].shape[1] == 48
    config = Florence2Config.preset("tiny", image_size=64, **helpers.MICRO).replace(
        text={"vocab_size": -(-len(tokenizer) // 64) * 64}
    )
    loss = Florence2(config)(
        batch["pixel_values"], batch["input_ids"], batch["attention_mask"], labels=batch["labels"]
    ).loss
    assert torch.isfinite(loss)


def test_image_tokens_plus_prompt_beyond_encoder_positions_is_a_config_error():
    model = {"preset": "tiny", "image_size": 640}  # 401 image tokens; the tiny encoder has 512 positions
    with pytest.raises(
        ConfigError, match=r"401 image tokens .* \+ max_prompt_length 256 = 657 > the encoder's 512"
    ):
        validate_fit(
            model,
            {"synthetic_dir": "x", "image_size": 640, "max_prompt_length": 256, "max_target_length": 64},
        )
    validate_fit(
        model, {"synthetic_dir": "x", "image_size": 640, "max_prompt_length": 100, "max_target_length": 64}
    )


class DeleteImages(L.Callback):
    """The shard disappears after setup validated it: decoding fails in the loader, mid-epoch."""

    def __init__(self, paths: list[str]):
        self.paths = paths

    def on_train_start(self, trainer, pl_module):
        for path in self.paths:
            Path(path).unlink()


def _broken_copy(synthetic: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    data = tmp_path / "data"
    shutil.copytree(synthetic, data)
    lines = (data / "train.jsonl").read_text().splitlines()
    # Two bad records (counted in skipped_records.json) and the images of a third of the rest to delete.
    (data / "train.jsonl").write_text("\n".join([*lines, '{"image": 3}', "{not json"]) + "\n")
    doomed = [str(data / json.loads(line)["image"]) for line in lines[::3]]
    return data, doomed


def test_images_deleted_mid_epoch_are_counted_and_reported_in_the_run_dir(synthetic, tmp_path):
    data, doomed = _broken_copy(synthetic, tmp_path)
    run = tmp_path / "run"
    trainer = helpers.trainer(run, max_steps=-1, max_epochs=1, callbacks=[DeleteImages(doomed)])
    trainer.fit(helpers.module(), helpers.datamodule(data, epoch_length=16))
    records = json.loads((run / "skipped_records.json").read_text())
    assert records["dropped"] == {"bad_field": 1, "malformed_json": 1}
    images = json.loads((run / "skipped_images_epoch0.json").read_text())
    skipped = images["skipped"]
    assert skipped["total"] > 0 and skipped["dropped"] == {"missing_image": skipped["total"]}


def test_a_bad_validation_image_is_counted_and_reported_not_dropped_silently(synthetic, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synthetic, data)
    doomed = str(data / json.loads((data / "val.jsonl").read_text().splitlines()[0])["image"])
    dm = helpers.datamodule(data)
    dm.prepare_data()
    dm.setup("validate")
    expected = sum(s.image_path == doomed for s in dm.val_dataset.flat)
    assert expected > 0
    Path(doomed).write_bytes(b"not an image")  # after setup: found only when the loader decodes it
    run = tmp_path / "run"
    trainer = helpers.trainer(run, max_steps=1, limit_val_batches=None)
    trainer.validate(helpers.module(), dm)
    report = json.loads((run / "skipped_images_val_step000000.json").read_text())
    assert report["stage"] == "val" and report["skipped"]["dropped"] == {"undecodable_image": expected}
    assert all(doomed in message for message in report["skipped"]["examples"]["undecodable_image"])
    assert trainer.callback_metrics["val/skipped_images"] == expected


def _resized_copy(synthetic: Path, tmp_path: Path) -> tuple[Path, dict, tuple[int, int]]:
    """The synthetic data with the first training record's image replaced by a copy at 3/4 of its size."""
    data = tmp_path / "data"
    shutil.copytree(synthetic, data)
    first = json.loads((data / "train.jsonl").read_text().splitlines()[0])
    image = Image.open(data / first["image"])
    small = (image.width * 3 // 4, image.height * 3 // 4)
    image.resize(small).save(data / first["image"])
    return data, first, small


@pytest.mark.parametrize("size_mismatch", ["skip", "rescale"])
def test_an_image_not_of_its_declared_size_is_skipped_or_rescaled_and_counted(
    synthetic, tmp_path, size_mismatch
):
    data, first, small = _resized_copy(synthetic, tmp_path)
    dm = helpers.datamodule(data, size_mismatch=size_mismatch)
    dm.prepare_data()
    dm.setup("fit")
    indices = [i for i, s in enumerate(dm.train_dataset.flat) if s.image_path.endswith(first["image"])]
    items = dm.train_dataset.__getitems__(indices)
    batch = Collator(dm.processor)(items)
    declared = f"{first['width']}x{first['height']}"
    if size_mismatch == "skip":
        assert batch["size"] == 0 and [e["reason"] for e in batch["skipped"]] == ["size_mismatch"] * len(
            indices
        )
        assert (
            f"the file is {small[0]}x{small[1]} but its record declares {declared}"
            in batch["skipped"][0]["message"]
        )
    else:
        # Trained as is (locations are relative, so they fall on the same places of the smaller file), reported
        # with the file's size, and counted as rewritten.
        assert batch["size"] == len(indices) and not batch["skipped"]
        assert batch["image_size"] == [small] * len(indices)
        assert batch["target"] == [dm.train_dataset.flat[i].target for i in indices]
        assert [e["reason"] for e in batch["rewritten"]] == ["size_mismatch_rescaled"] * len(indices)


def test_an_image_not_of_its_declared_size_raises_naming_it_when_on_bad_sample_is_raise(synthetic, tmp_path):
    data, first, _ = _resized_copy(synthetic, tmp_path)
    dm = helpers.datamodule(data, on_bad_sample="raise")
    dm.prepare_data()
    dm.setup("fit")
    index = next(i for i, s in enumerate(dm.train_dataset.flat) if s.image_path.endswith(first["image"]))
    with pytest.raises(BadImageError, match=re.escape(first["image"]) + ".*but its record declares"):
        dm.train_dataset[index]


def test_images_deleted_mid_epoch_raise_naming_the_file_when_on_bad_sample_is_raise(synthetic, tmp_path):
    data, doomed = _broken_copy(synthetic, tmp_path)
    (data / "train.jsonl").write_text("\n".join((data / "train.jsonl").read_text().splitlines()[:-2]) + "\n")
    trainer = helpers.trainer(tmp_path / "run", max_steps=-1, max_epochs=1, callbacks=[DeleteImages(doomed)])
    with pytest.raises(BadImageError, match="file not found"):
        trainer.fit(helpers.module(), helpers.datamodule(data, epoch_length=16, on_bad_sample="raise"))


# ---------------------------------------------------------------------------- numerical faults
class PoisonWeight(L.Callback):
    def __init__(self, from_step: int):
        self.from_step = from_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.from_step:
            with torch.no_grad():
                pl_module.model.projector.image_projection.weight.fill_(float("nan"))


class PoisonGradient(L.Callback):
    """One non-finite gradient element at one step only; records the weights around that step."""

    def __init__(self, step: int, value: float):
        self.step, self.value, self.before, self.after = step, value, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            self.before = {n: p.detach().clone() for n, p in pl_module.model.named_parameters()}

    def on_after_backward(self, trainer, pl_module):
        if trainer.global_step == self.step:
            next(p for p in pl_module.model.parameters() if p.grad is not None).grad.view(-1)[0] = self.value

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.before is not None and self.after is None:
            self.after = {n: p.detach().clone() for n, p in pl_module.model.named_parameters()}


def test_nan_loss_steps_are_skipped_then_training_stops_clearly(synthetic, tmp_path):
    trainer = helpers.trainer(tmp_path, max_steps=8, callbacks=[PoisonWeight(from_step=2)])
    lit = helpers.module(max_nonfinite_steps=3)
    with pytest.raises(NonFiniteLossError, match="3 consecutive steps had a non-finite loss"):
        trainer.fit(lit, helpers.datamodule(synthetic))
    assert lit.nonfinite_steps == 3 and lit._nonfinite_in_a_row == 3


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_nonfinite_gradient_step_is_skipped_counted_and_training_goes_on(synthetic, tmp_path, value):
    poison = PoisonGradient(step=2, value=value)
    trainer = helpers.trainer(tmp_path, max_steps=4, callbacks=[poison])
    lit = helpers.module()
    trainer.fit(lit, helpers.datamodule(synthetic))
    assert lit.nonfinite_steps == 1 and lit._nonfinite_in_a_row == 0
    assert all(torch.equal(poison.before[n], poison.after[n]) for n in poison.before), (
        "the poisoned step moved weights"
    )
    assert all(torch.isfinite(p).all() for p in lit.model.parameters())


# ---------------------------------------------------------------------------- checkpoints
def test_checkpoint_write_is_atomic_when_interrupted(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, path)
    good = path.read_bytes()

    def dies_half_way(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # e.g. Ctrl-C or a preemption signal during the write

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 2}, path)
    assert path.read_bytes() == good and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_truncated_checkpoint_fails_on_load_naming_the_file(tmp_path):
    io, path = AtomicCheckpointIO(), tmp_path / "epoch=0-step=4.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(1000)}, "global_step": 4}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match=r"epoch=0-step=4.ckpt: cannot be read as a checkpoint"):
        io.load_checkpoint(path)


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    torch.save(
        {"state_dict": {}, "global_step": 1, "payload": Image.new("L", (1, 1))}, tmp_path / "evil.ckpt"
    )
    with pytest.raises(CheckpointError, match=r"evil.ckpt"):
        AtomicCheckpointIO().load_checkpoint(tmp_path / "evil.ckpt")


def test_auto_resume_falls_back_to_the_previous_good_checkpoint(tmp_path):
    io = AtomicCheckpointIO()
    for step in (3, 6):
        io.save_checkpoint(
            {"state_dict": {"w": torch.ones(100)}, "global_step": step}, tmp_path / f"step={step}.ckpt"
        )
    io.save_checkpoint({"state_dict": {"w": torch.ones(100)}, "global_step": 6}, tmp_path / "last.ckpt")
    assert find_resume_checkpoint([tmp_path]).name in ("step=6.ckpt", "last.ckpt")
    for name in ("step=6.ckpt", "last.ckpt"):
        (tmp_path / name).write_bytes((tmp_path / name).read_bytes()[:100])
    assert find_resume_checkpoint([tmp_path]) == (tmp_path / "step=3.ckpt").resolve()
    assert find_resume_checkpoint([tmp_path / "missing"]) is None


def test_a_write_killed_before_its_rename_leaves_a_temporary_file_the_next_start_removes(tmp_path):
    # A real kill: the child process SIGKILLs itself where the rename would happen, after the data is on disk.
    child = f"""
import os, signal, torch
from pathlib import Path
from f2lightning.training.checkpointing import atomic_torch_save
os.replace = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
atomic_torch_save({{"state_dict": {{}}, "global_step": 3}}, Path({str(tmp_path / "ckpt" / "last.ckpt")!r}))
"""
    done = subprocess.run(
        [sys.executable, "-c", child], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    assert done.returncode == -signal.SIGKILL
    left = list((tmp_path / "ckpt").iterdir())
    assert len(left) == 1 and left[0].name.startswith(".last.ckpt.") and left[0].suffix == ".tmp"
    (tmp_path / "ckpt" / "notes.tmp").write_text("not ours")  # only the checkpoint writer's own files go

    trainer = L.Trainer(default_root_dir=tmp_path, logger=False,
                        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt")])  # fmt: skip
    assert resume_path(None, "auto", trainer) is None  # nothing complete to resume from
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["notes.tmp"]


# ---------------------------------------------------------------------------- configuration
def test_cli_rejects_contradictory_config_at_startup_with_one_message(tmp_path):
    from f2lightning.training.cli import main

    data = tmp_path / "not_yet_written"
    args = [
        "fit",
        f"--data.synthetic_dir={data}",
        "--data.image_size=64",
        "--data.max_prompt_length=600",
        "--data.tasks=[<CAPTION>, <OD>]",
        '--data.task_weights={"<CAPTION>": 1, "<OD>": 0}',
        "--model.freeze_vision_stages=7",
        f"--ckpt_path={tmp_path / 'gone.ckpt'}",
        "--trainer.accelerator=cpu",
        "--trainer.logger=false",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    with pytest.raises(ConfigError) as error:
        main(args)
    message = str(error.value)
    for expected in (
        "freeze_vision_stages=7 is out of range",
        "task_weights must be positive",
        "max_prompt_length 600",
        "gone.ckpt does not exist",
    ):
        assert expected in message
    assert not data.exists(), "data was touched before the configuration was checked"


@pytest.mark.parametrize(
    ("model", "data", "expected"),
    [
        (
            {"preset": "tiny"},
            {"synthetic_dir": "x", "tasks": ["<OD>", "<WHAT>"]},
            r"unknown task\(s\) \['<WHAT>'\]",
        ),
        ({"preset": "tiny"}, {"synthetic_dir": "x", "image_size": 100}, "multiple of 32"),
        ({"preset": "tiny"}, {"synthetic_dir": "x", "task_weights": {"<OD>": -1.0}}, "positive"),
        (
            {"preset": "tiny", "pretrained": "/no/such/model"},
            None,
            "pretrained /no/such/model does not exist",
        ),
        ({"preset": "huge"}, None, "unknown preset"),
        (
            {"preset": "tiny"},
            {"train_files": ["/no/train.jsonl"], "tokenizer": "/no/tok"},
            "/no/train.jsonl does not exist",
        ),
        (
            {"preset": "tiny", "vision_lr_scale": 0},
            None,
            "vision_lr_scale must be a positive number.*freeze_vision",
        ),
        (
            {"preset": "tiny", "hold_encoders_steps": -5},
            None,
            "hold_encoders_steps must be a whole number >= 0, got -5",
        ),
        (
            {"preset": "tiny"},
            {
                "synthetic_dir": "x",
                "tasks": ["<OD>"],
                "warmup_task_weights": {"<CAPTION>": 1},
                "warmup_task_steps": 10,
            },
            r"warmup_task_weights name tasks that are not trained on: \['<CAPTION>'\]",
        ),
        ({"preset": "tiny"}, {"synthetic_dir": "x", "warmup_task_steps": 10}, "give both or neither"),
        (
            {"preset": "tiny"},
            {"synthetic_dir": "x", "warmup_task_weights": {"<OD>": 1}},
            "give both or neither",
        ),
        ({"preset": "tiny"}, {"synthetic_dir": "x", "warmup_task_weights": {"<OD>": 0}}, "one positive"),
        (
            {"preset": "tiny", "config_overrides": {"image_mean": (0.5, 0.5, 0.5)}},
            {
                "synthetic_dir": "x",
                "image_size": 64,
                "max_target_length": 512,
                "image_mean": (0.485, 0.456, 0.406),
            },
            r"data.image_mean \[0.485, 0.456, 0.406\] is not the model's \[0.5, 0.5, 0.5\]",
        ),
    ],
    ids=[
        "unknown-task",
        "image-size",
        "weights",
        "pretrained-missing",
        "preset",
        "files-missing",
        "vision-lr-scale",
        "hold-encoders",
        "warmup-tasks",
        "warmup-no-weights",
        "warmup-no-steps",
        "warmup-all-zero",
        "normalisation",
    ],
)
def test_config_validation_names_the_problem(model, data, expected):
    with pytest.raises(ConfigError, match=expected):
        validate_fit(model, data)


def test_each_part_refuses_its_own_bad_values_when_built_directly(tmp_path):
    # The rules are the ones validate_fit runs (one definition each), raised by the constructors for API users.
    from f2lightning.training import Florence2LitModule

    with pytest.raises(
        ConfigError, match=r"invalid data configuration:\n  - data.task_weights must be positive"
    ):
        Florence2DataModule(synthetic_dir=str(tmp_path), task_weights={"<OD>": 0})
    with pytest.raises(ConfigError, match=r"batch_size 6 must be a positive multiple of tasks_per_image 4"):
        Florence2DataModule(synthetic_dir=str(tmp_path), batch_size=6, tasks_per_image=4)
    with pytest.raises(ConfigError, match=r"invalid model configuration:\n  - model.vision_lr_scale"):
        Florence2LitModule(vision_lr_scale=0)
    # Files on disk are a fit's concern, not the constructor's: building with a path to come is fine.
    Florence2DataModule(train_files=[str(tmp_path / "later.jsonl")], tokenizer=str(tmp_path / "tok"))


def test_targets_beyond_max_target_length_are_counted_in_the_log_and_the_run_dir(synthetic, tmp_path):
    run = tmp_path / "run"
    trainer = helpers.trainer(run, max_steps=-1, max_epochs=1)
    trainer.fit(helpers.module(), helpers.datamodule(synthetic, epoch_length=16, max_target_length=12))
    assert trainer.callback_metrics["train/truncated_targets"] > 0
    report = json.loads((run / "truncated_targets_epoch0.json").read_text())["truncated"]
    assert report["total"] == trainer.callback_metrics["train/truncated_targets"]
    # OD / region targets are cut at whole boxes; captions and answers at the token limit.
    assert set(report["dropped"]) <= {"target_truncated_at_item", "target_truncated"}
    assert "target_truncated_at_item" in report["dropped"]
