"""The `f2lightning` command line: every area's commands are there, and none needs the OpenMMLab stack."""

from __future__ import annotations

import subprocess
import sys

import pytest

from f2lightning import cli

# The OpenMMLab stack made absent in a fresh interpreter (an import of a name mapped to None fails).
WITHOUT_OPENMMLAB = (
    "import sys\nfor name in ('mmcv', 'mmdet', 'mmseg', 'mmengine'):\n    sys.modules[name] = None\n"
)


def run_cli(*argv: str, prelude: str = "") -> subprocess.CompletedProcess:
    code = f"{prelude}import sys\nfrom f2lightning.cli import main\nsys.exit(main({list(argv)!r}))\n"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_without_openmmlab_export_backbone_runs(tmp_path):
    # Exporting a backbone writes a plain file; it must not need mmcv / mmdet / mmseg / mmengine.
    import torch

    from f2lightning.model import Florence2, Florence2Config

    Florence2(Florence2Config.preset("tiny", image_token_id=5)).save_pretrained(tmp_path / "model")
    out = tmp_path / "davit.pth"
    ran = run_cli("export-backbone", str(tmp_path / "model"), "-o", str(out), prelude=WITHOUT_OPENMMLAB)
    assert ran.returncode == 0, ran.stderr
    assert "DaViT tiny" in ran.stdout
    assert torch.load(out, weights_only=True)["meta"]["arch"] == "tiny"


def test_an_import_error_in_a_core_command_module_surfaces(monkeypatch):
    # A broken command module must not make its commands vanish.
    monkeypatch.setitem(sys.modules, "f2lightning.evaluation.commands", None)
    with pytest.raises(ImportError, match=r"f2lightning\.evaluation\.commands"):
        cli.build_parser()


def test_every_command_is_registered():
    commands = cli.build_parser()._subparsers._group_actions[0].choices
    expected = {"train-tokenizer", "convert", "make-synthetic", "shard", "evaluate", "export-backbone"}
    assert expected | cli.LIGHTNING_SUBCOMMANDS <= set(commands)
