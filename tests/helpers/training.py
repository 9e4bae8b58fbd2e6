"""Small builders shared by the training tests (and run as a script by the DDP test)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import lightning as L
import torch

from f2lightning.data.datamodule import Florence2DataModule
from f2lightning.training import Florence2LitModule

TASKS = ["<CAPTION>", "<OD>", "<VQA>"]
# A model small enough for many optimizer steps on two cores.
MICRO = {
    "vision": {"embed_dims": (16, 32, 48, 64), "num_heads": (1, 1, 2, 2)},
    "text": {
        "d_model": 64,
        "encoder_ffn_dim": 128,
        "decoder_ffn_dim": 128,
        "encoder_attention_heads": 2,
        "decoder_attention_heads": 2,
    },
}


def datamodule(
    data_dir: str | Path, batch_size: int = 4, epoch_length: int = 64, **kwargs
) -> Florence2DataModule:
    return Florence2DataModule(
        synthetic_dir=str(data_dir),
        synthetic_images=40,
        tokenizer_vocab_size=600,
        image_size=64,
        batch_size=batch_size,
        epoch_length=epoch_length,
        num_workers=0,
        tasks=TASKS,
        val_samples_per_task=4,
        **kwargs,
    )


def module(**kwargs) -> Florence2LitModule:
    defaults = {
        "preset": "tiny",
        "config_overrides": MICRO,
        "lr": 2e-3,
        "warmup_steps": 2,
        "num_beams": 1,
        "val_max_new_tokens": 16,
        "log_predictions": 0,
    }
    return Florence2LitModule(**{**defaults, **kwargs})


def trainer(root: str | Path, max_steps: int, **kwargs) -> L.Trainer:
    defaults = {
        "accelerator": "cpu",
        "devices": 1,
        "max_steps": max_steps,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "use_distributed_sampler": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 0,
        "default_root_dir": str(root),
        "deterministic": True,
    }
    return L.Trainer(**{**defaults, **kwargs})


def main() -> None:
    """Train a few steps (DDP when --devices 2) and save the final weights: used by test_ddp_*."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--poison-rank",
        type=int,
        default=None,
        help="make one gradient Inf on this rank only, at step 1, after the all-reduce",
    )
    args = parser.parse_args()
    L.seed_everything(0)
    dm = datamodule(args.data, batch_size=args.batch_size)
    lit = module()
    strategy = "ddp" if args.devices > 1 else "auto"
    fit = trainer(Path(args.out).parent, args.steps, devices=args.devices, strategy=strategy)
    seen: list[int] = []

    class RecordIndices(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.extend(batch["index"])

    class PoisonGradientOnRank(L.Callback):
        # Callbacks' on_before_optimizer_step runs before the module's, which decides whether to skip the step.
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            if trainer.global_rank == args.poison_rank and trainer.global_step == 1:
                next(p for p in pl_module.model.parameters() if p.grad is not None).grad.view(-1)[0] = float(
                    "inf"
                )

    fit.callbacks.append(RecordIndices())
    if args.poison_rank is not None:
        fit.callbacks.append(PoisonGradientOnRank())
    fit.fit(lit, dm)
    rank = fit.global_rank
    Path(f"{args.out}.rank{rank}.json").write_text(json.dumps(seen))
    if args.poison_rank is not None:
        torch.save(
            {"state": lit.model.state_dict(), "nonfinite_steps": lit.nonfinite_steps},
            f"{args.out}.rank{rank}.pt",
        )
    if rank == 0:
        torch.save(lit.model.state_dict(), args.out)


if __name__ == "__main__":
    main()
