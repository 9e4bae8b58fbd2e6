"""The fine-tuning recipes (`configs/finetune/<task>.yaml`, alone or with a variant of `configs/finetune/variants/`
layered over it) parse through our LightningCLI into the settings they promise, pass a fit's start-up checks
against the base model's position tables, and the OD + LoRA recipe trains two steps on CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from f2lightning.data.datamodule import data_problems
from f2lightning.data.synthetic import SyntheticConfig, make_synthetic
from f2lightning.model import Florence2, Florence2Config
from f2lightning.training.cli import main as lightning_cli
from f2lightning.training.module import model_problems
from f2lightning.training.validation import position_problems
from tests.helpers.weights import tiny_checkpoint

RECIPES = Path(__file__).resolve().parents[1] / "configs" / "finetune"
TASKS = {
    "od": ["<OD>"],
    "docvqa": ["<VQA>"],
    "ocr": ["<OCR>", "<OCR_WITH_REGION>"],
    "caption": ["<CAPTION>", "<DETAILED_CAPTION>"],
}
# Variant -> the files layered over the task's, and the settings it may change (everything else stays the task's).
VARIANTS = {
    "full": ([], set()),
    "frozen_vision": (["variants/frozen_vision.yaml"], {"model.freeze_vision"}),
    "lora": (["variants/lora.yaml"], {"model.lora", "model.lr"}),
}
LORA = {"preset": "language", "rank": 16, "alpha": 32, "dropout": 0.05}


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> dict[str, Path]:
    """A tiny checkpoint in the released layout (weights + tokenizer) and small synthetic records holding every
    task the recipes train (boxes, questions, text lines, brief and detailed captions)."""
    root = tmp_path_factory.mktemp("finetune")
    data = make_synthetic(root / "data", 12, config=SyntheticConfig(image_size=64), val_fraction=0.25)
    return {"checkpoint": tiny_checkpoint(root / "checkpoint"), **data}


def _files(task: str, variant: str) -> list[str]:
    names = [f"{task}.yaml", *VARIANTS[variant][0]]
    return [arg for name in names for arg in ("-c", str(RECIPES / name))]


def _local_run(local: dict[str, Path]) -> list[str]:
    # What a user gives on the command line: the weights and the record files. CPU: no GPU on the test machines.
    return [
        "--trainer.accelerator=cpu",
        f"--model.pretrained={local['checkpoint']}",
        f"--data.tokenizer={local['checkpoint']}",
        f"--data.train_files=[{local['train']}]",
        f"--data.val_files=[{local['val']}]",
    ]


def _settings(cli) -> dict[str, Any]:
    """The parsed trainer / model / data settings as `section.key` -> value."""
    config = cli.config.as_dict()
    return {
        f"{section}.{key}": value
        for section in ("trainer", "model", "data")
        for key, value in config[section].items()
    }


def test_every_recipe_file_is_covered():
    assert sorted(p.stem for p in RECIPES.glob("*.yaml")) == sorted(TASKS)
    layered = {name for files, _ in VARIANTS.values() for name in files}
    assert {f"variants/{p.name}" for p in (RECIPES / "variants").glob("*.yaml")} == layered


@pytest.mark.parametrize("task", sorted(TASKS))
def test_recipe_variants_parse_into_their_settings(task, local):
    parsed = {
        variant: lightning_cli([*_files(task, variant), *_local_run(local)], run=False)
        for variant in VARIANTS
    }
    full = _settings(parsed["full"])
    for variant, cli in parsed.items():
        model, data = cli.model.hparams, cli.datamodule.hparams
        assert data.tasks == TASKS[task]
        assert data.image_size == model.image_size == 768
        assert cli.trainer.precision == "bf16-mixed"
        # Every start-up check of a fit; the positions against Florence-2-base's tables (the tiny checkpoint
        # standing in for its weights has smaller ones).
        problems = (
            model_problems(model)
            + data_problems(data)
            + position_problems(Florence2Config.preset("base"), data)
        )
        assert problems == []
        changed = {key for key, value in _settings(cli).items() if full[key] != value}
        assert changed == VARIANTS[variant][1], variant
        if variant == "full":
            assert 1e-6 <= model.lr <= 5e-6
            assert not model.freeze_vision and model.lora is None
        elif variant == "frozen_vision":
            assert model.freeze_vision
        else:
            assert model.lora == LORA
            assert model.lr == 2e-4


def test_the_od_lora_recipe_trains_only_its_adapters(local, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the recipe's run folder (runs/finetune/...) lands here
    tiny = [
        "--trainer.precision=32-true", "--trainer.max_steps=2", "--trainer.limit_val_batches=0",
        "--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false", "--data.image_size=64",
        "--data.batch_size=2", "--data.num_workers=0", "--data.max_target_length=512",
    ]  # fmt: skip
    cli = lightning_cli(["fit", *_files("od", "lora"), *_local_run(local), *tiny])
    assert cli.trainer.global_step == 2
    assert cli.trainer.datamodule.train_dataset.task_sizes.keys() == {"<OD>"}
    trained = {name: p for name, p in cli.model.model.named_parameters() if p.requires_grad}
    assert trained and all(".lora_" in name for name in trained)
    assert any(p.abs().sum() > 0 for name, p in trained.items() if ".lora_B." in name)  # B starts at zero
    base = dict(Florence2.from_pretrained(local["checkpoint"]).named_parameters())
    for name, param in cli.model.model.named_parameters():
        if not param.requires_grad:  # peft keeps a wrapped layer's own weight as `<layer>.base_layer.weight`
            assert torch.equal(param, base[name.replace(".base_layer.", ".")]), name
