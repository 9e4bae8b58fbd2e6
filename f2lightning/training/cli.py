"""LightningCLI for f2lightning: `python train.py fit -c configs/<x>.yaml [--trainer.devices=8 ...]`."""

from __future__ import annotations

import sys
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from f2lightning.allocator import keep_freed_cpu_memory
from f2lightning.data.datamodule import Florence2DataModule
from f2lightning.training.checkpointing import resume_path, use_atomic_checkpoint_io
from f2lightning.training.module import Florence2LitModule
from f2lightning.training.prediction import PredictionWriter
from f2lightning.training.validation import validate_fit


class Florence2CLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # One resolution for data and model: the model's position tables and the resize must agree.
        parser.link_arguments("data.image_size", "model.image_size")
        # The mixed-task sampler deals disjoint per-rank streams itself; Lightning must not wrap it.
        parser.set_defaults({"trainer.use_distributed_sampler": False})
        # Re-running the same command after a crash continues from the run's newest good checkpoint.
        parser.add_argument(
            "--resume",
            choices=["auto", "never"],
            default="auto",
            help="auto: without --ckpt_path, resume from the newest good checkpoint of this run",
        )

    def instantiate_classes(self) -> None:
        # Every problem of a fit, in one message, before any constructor (each checks only its own part) runs.
        if self.subcommand == "fit":
            config = self.config["fit"]
            validate_fit(_plain(config.get("model")), _plain(config.get("data")), config.get("ckpt_path"))
        super().instantiate_classes()

    def before_fit(self) -> None:
        config = self.config_init[self.subcommand]
        config.ckpt_path = self.prepare_fit(config.get("ckpt_path"), config.get("resume", "auto"))

    def before_predict(self) -> None:
        # Answers go to a JSONL file as batches finish, not into one list held in memory until the end.
        if not any(isinstance(c, PredictionWriter) for c in self.trainer.callbacks):
            self.trainer.callbacks.append(PredictionWriter())
        self.config_init[self.subcommand].return_predictions = False

    def prepare_fit(self, ckpt_path: str | None, resume: str = "auto") -> str | None:
        """The checkpoint `fit` should start from (`resume_path`), after checking the run's settings and making
        checkpoint writes atomic. `fit` calls it itself; a script driving the trainer (the demo) calls it."""
        ckpt_path = resume_path(ckpt_path, resume, self.trainer)
        # Contradictions fail here with one message, before prepare_data / setup read any data.
        validate_fit(self.model.hparams, self.datamodule.hparams if self.datamodule else None, ckpt_path)
        use_atomic_checkpoint_io(self.trainer)
        return ckpt_path


def main(args: list[str] | None = None, run: bool = True) -> Florence2CLI:
    keep_freed_cpu_memory()
    given = sys.argv[1:] if args is None else args
    if run and not (given and (given[0] in Florence2CLI.subcommands() or given[0] in ("-h", "--help"))):
        # No sub-command (`python train.py -c configs/demo.yaml`, as `lightning run model train.py ...` passes it):
        # training is what is meant. On the command line itself, so that LightningCLI reads sys.argv as usual.
        if args is None:
            sys.argv.insert(1, "fit")
        else:
            args = ["fit", *args]
    return Florence2CLI(
        Florence2LitModule,
        Florence2DataModule,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"parser_mode": "omegaconf"} if _has_omegaconf() else None,
    )


def _has_omegaconf() -> bool:
    try:
        import omegaconf  # noqa: F401
    except ImportError:
        return False
    return True


def _plain(section: Any) -> dict[str, Any]:
    # A parsed section (jsonargparse Namespace) as the plain mapping the checks read; absent means defaults.
    return section.as_dict() if section is not None else {}
