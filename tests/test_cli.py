"""The `f2lightning` command line: every area's commands are there, or say why they cannot run."""

from __future__ import annotations

import subprocess
import sys

import pytest

from f2lightning import cli

# The OpenMMLab stack made absent in a fresh interpreter (an import of a name mapped to None fails).
WITHOUT_OPENMMLAB = "import sys\nfor name in ('mmcv', 'mmdet', 'mmseg'):\n    sys.modules[name] = None\n"


def run_cli(*argv: str, prelude: str = "") -> subprocess.CompletedProcess:
    code = f"{prelude}import sys\nfrom f2lightning.cli import main\nsys.exit(main({list(argv)!r}))\n"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_without_openmmlab_export_backbone_is_listed_and_says_what_to_install():
    listing = run_cli("--help", prelude=WITHOUT_OPENMMLAB)
    assert listing.returncode == 0, listing.stderr
    assert "export-backbone" in listing.stdout and "scripts/install_mmcv.sh" in listing.stdout
    help_ = run_cli("export-backbone", "--help", prelude=WITHOUT_OPENMMLAB)
    assert help_.returncode == 0 and "OpenMMLab" in help_.stdout
    ran = run_cli("export-backbone", "model.ckpt", "-o", "davit.pth", prelude=WITHOUT_OPENMMLAB)
    assert ran.returncode == 2
    assert "export-backbone: error: needs the OpenMMLab stack" in ran.stderr and "Traceback" not in ran.stderr


def test_an_import_error_in_a_core_command_module_surfaces(monkeypatch):
    # Only the OpenMMLab commands may be missing; a broken module elsewhere must not make its commands vanish.
    monkeypatch.setitem(sys.modules, "f2lightning.evaluation.commands", None)
    with pytest.raises(ImportError, match=r"f2lightning\.evaluation\.commands"):
        cli.build_parser()


def test_every_command_is_registered():
    pytest.importorskip("mmdet")
    commands = cli.build_parser()._subparsers._group_actions[0].choices
    expected = {"train-tokenizer", "convert", "make-synthetic", "shard", "evaluate", "export-backbone"}
    assert expected | cli.LIGHTNING_SUBCOMMANDS <= set(commands)
    assert "unavailable" not in commands["export-backbone"].format_help()
