"""Every training config parses and instantiates through LightningCLI (CPU overrides; no data is read)."""

from __future__ import annotations

from pathlib import Path

import pytest

from f2lightning.training.cli import main as lightning_cli

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CPU = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto", "--trainer.precision=32-true"]
BASES = sorted(p.name for p in CONFIGS.glob("*.yaml") if p.name not in {"pretrain_base_768.yaml", "pretrain_large_768.yaml", "finetune_generalist_large.yaml"})
LAYERED = [
    ("pretrain_base_384.yaml", "pretrain_base_768.yaml"),
    ("pretrain_large_384.yaml", "pretrain_large_768.yaml"),
    ("finetune_generalist_base.yaml", "finetune_generalist_large.yaml"),
    *[("pretrain_base_384.yaml", f"ablations/{p.name}") for p in sorted((CONFIGS / "ablations").glob("*.yaml"))],
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
    for files, expected in [(("pretrain_base_384.yaml",), 2048), (("pretrain_base_384.yaml", "pretrain_base_768.yaml"), 2048),
                            (("pretrain_large_384.yaml",), 3072), (("pretrain_large_384.yaml", "pretrain_large_768.yaml"), 3072)]:
        cli = _instantiate(*files)
        assert cli.datamodule.hparams.batch_size * 8 * cli.trainer.accumulate_grad_batches == expected, files
