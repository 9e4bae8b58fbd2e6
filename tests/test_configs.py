"""Every training config parses and instantiates through LightningCLI, and trains two steps on tiny data with CPU
overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from f2lightning.training.cli import main as lightning_cli
from tests.helpers import training as helpers

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CPU = [
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.strategy=auto",
    "--trainer.precision=32-true",
]
BASES = sorted(
    p.name
    for p in CONFIGS.glob("*.yaml")
    if p.name not in {"pretrain_base_768.yaml", "pretrain_large_768.yaml", "finetune_generalist_large.yaml"}
)
LAYERED = [
    ("pretrain_base_384.yaml", "pretrain_base_768.yaml"),
    ("pretrain_large_384.yaml", "pretrain_large_768.yaml"),
    ("finetune_generalist_base.yaml", "finetune_generalist_large.yaml"),
    *[
        ("pretrain_base_384.yaml", f"ablations/{p.name}")
        for p in sorted((CONFIGS / "ablations").glob("*.yaml"))
    ],
]


def _instantiate(*files: str):
    args = [arg for name in files for arg in ("-c", str(CONFIGS / name))]
    return lightning_cli([*args, *CPU], run=False)


@pytest.mark.parametrize("name", BASES)
def test_config_instantiates(name):
    cli = _instantiate(name)
    assert cli.model.hparams.image_size == cli.datamodule.hparams.image_size
    assert cli.trainer.max_steps > 0


@pytest.mark.parametrize(("base", "layer"), LAYERED, ids=[layer for _, layer in LAYERED])
def test_layered_config_instantiates(base, layer):
    cli = _instantiate(base, layer)
    if "768" in layer:
        assert cli.datamodule.hparams.image_size == 768
    if layer.endswith("frozen_vision.yaml"):
        assert cli.model.hparams.freeze_vision
    if "data_0.12M" in layer:
        assert cli.datamodule.hparams.max_images == 120_000


def test_paper_batch_sizes():
    # Global batch = per-device batch x 8 devices x accumulation: 2048 (B) and 3072 (L), paper §6.1.
    for files, expected in [
        (("pretrain_base_384.yaml",), 2048),
        (("pretrain_base_384.yaml", "pretrain_base_768.yaml"), 2048),
        (("pretrain_large_384.yaml",), 3072),
        (("pretrain_large_384.yaml", "pretrain_large_768.yaml"), 3072),
    ]:
        cli = _instantiate(*files)
        assert cli.datamodule.hparams.batch_size * 8 * cli.trainer.accumulate_grad_batches == expected, files


# ---------------------------------------------------------------------------- every config trains
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """Synthetic records with every task, their tokenizer, and a tiny checkpoint in the transformers layout that
    stands in for released Florence-2 weights."""
    root = tmp_path_factory.mktemp("config_data")
    data = helpers.datamodule(root / "synthetic")
    data.prepare_data()
    data.setup("validate")
    module = helpers.module()
    module._build(data.tokenizer)
    module.export(root / "florence2")
    return root


def _tiny_run(data: Path, pretrained: bool) -> list[str]:
    """What turns a shipped config into a two-step CPU run on the tiny data; everything else stays the config's."""
    synthetic = data / "synthetic"
    model = (
        [f"--model.pretrained={data / 'florence2'}"]
        if pretrained
        else ["--model.preset=tiny", f"--model.config_overrides={json.dumps(helpers.MICRO)}"]
    )
    return [
        *CPU, "--trainer.max_steps=2", "--trainer.accumulate_grad_batches=1", "--trainer.limit_val_batches=0",
        "--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false",
        f"--data.train_files=[{synthetic / 'train.jsonl'}]", f"--data.val_files=[{synthetic / 'val.jsonl'}]",
        f"--data.tokenizer={data / 'florence2' if pretrained else synthetic / 'tokenizer'}", "--data.image_size=64",
        "--data.batch_size=2", "--data.num_workers=0", "--data.max_target_length=512", "--data.val_samples_per_task=1",
        *model, "--model.hold_encoders_steps=0", "--model.warmup_steps=1",
    ]  # fmt: skip


@pytest.mark.parametrize("files", [(name,) for name in BASES] + LAYERED, ids=lambda files: "+".join(files))
def test_config_trains_two_steps(files, tiny_data, tmp_path, monkeypatch):
    # Through `fit` as a user runs it, logger included: Lightning merges the model's and the data's hyperparameters
    # when it logs them, and a setting both declare with different values stops the run before step 0.
    monkeypatch.chdir(tmp_path)  # the configs' relative run folders land here
    config = load_config(*files)
    pretrained = bool(config.get("model", {}).get("pretrained"))
    args = [arg for name in files for arg in ("-c", str(CONFIGS / name))]
    cli = lightning_cli(["fit", *args, *_tiny_run(tiny_data, pretrained)])
    assert cli.trainer.global_step == 2
    assert cli.trainer.loggers, "the run must log its hyperparameters, as the shipped configs do"


def load_config(*files: str) -> dict:
    """The configs merged as LightningCLI layers them (later files override earlier keys, one level deep is enough
    for the keys read here)."""
    merged: dict = {}
    for name in files:
        for key, value in (yaml.safe_load((CONFIGS / name).read_text()) or {}).items():
            merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
    return merged


def test_the_readme_test_and_predict_commands_run_on_the_demo_checkpoint_and_its_export(
    tiny_data, tmp_path, monkeypatch
):
    # `python train.py test -c configs/demo.yaml --ckpt_path=runs/demo/checkpoints/last.ckpt` after a demo run.
    monkeypatch.chdir(tmp_path)
    demo = ["-c", str(CONFIGS / "demo.yaml"), *_tiny_run(tiny_data, pretrained=False)]
    lightning_cli(["fit", *demo, "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.dirpath=runs/demo/checkpoints",
                   "--trainer.callbacks.save_last=true"])  # fmt: skip
    checkpoint = tmp_path / "runs/demo/checkpoints/last.ckpt"
    assert checkpoint.is_file()
    cli = lightning_cli(["test", *demo, f"--ckpt_path={checkpoint}", "--trainer.limit_test_batches=1"])
    assert "test/loss" in cli.trainer.callback_metrics
    # The checkpoint also reloads as a module on its own and exports what plain transformers opens.
    from transformers import AutoProcessor

    from f2lightning.training import Florence2LitModule

    Florence2LitModule.load_from_checkpoint(checkpoint, map_location="cpu").export(tmp_path / "model")
    assert AutoProcessor.from_pretrained(tmp_path / "model").image_processor.size == {
        "height": 64,
        "width": 64,
    }
    # README "Prediction": both predict commands, on three of the demo's images.
    from f2lightning.cli import main as f2lightning

    images = tmp_path / "images"
    images.mkdir()
    for image in sorted((tiny_data / "synthetic" / "images").glob("*.png"))[:3]:
        (images / image.name).write_bytes(image.read_bytes())
    predicted = tmp_path / "runs/demo/predictions.jsonl"
    assert f2lightning(["predict", str(images), "--checkpoint", str(tmp_path / "model"), "--task", "<OD>",
                        "--task", "caption", "-o", str(predicted), "--pictures", str(tmp_path / "pictures"),
                        "--max-new-tokens", "8", "--num-workers", "0", "--no-progress"]) == 0  # fmt: skip
    assert len(predicted.read_text().splitlines()) == 6 and len(list((tmp_path / "pictures").iterdir())) == 6
    cli = lightning_cli(["predict", *demo, f"--ckpt_path={checkpoint}", f"--data.predict_files=[{images}]",
                         "--data.predict_tasks=[<OD>]", "--model.val_max_new_tokens=8"])  # fmt: skip
    written = Path(cli.trainer.log_dir) / "predictions.jsonl"  # the run's log folder
    assert [json.loads(line)["task"] for line in written.read_text().splitlines()] == ["<OD>"] * 3
