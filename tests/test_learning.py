"""The tiny model actually learns the synthetic tasks: trained quality far above the untrained model's."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import lightning as L
import pytest
import torch

from f2lightning.data.datamodule import Florence2DataModule
from f2lightning.data.synthetic import SyntheticConfig, make_synthetic
from tests.helpers import training as helpers

STEPS = int(os.environ.get("F2L_LEARN_STEPS", "900"))
CAPTION_WARMUP = 300
VAL_SAMPLES = 96


def caption_prior(val_file, samples: int) -> float:
    """Exact match of always giving the most frequent of the validated captions: what ignoring the image scores."""
    captions = [json.loads(line)["texts"]["brief"][0] for line in Path(val_file).read_text().splitlines()][:samples]
    return Counter(captions).most_common(1)[0][1] / len(captions)


@pytest.mark.slow
def test_tiny_model_learns_the_synthetic_tasks(tmp_path_factory):
    data = tmp_path_factory.mktemp("learn")
    # One shape per image and enough images that captions must be read off the image rather than memorised.
    make_synthetic(data, 3000, seed=0, config=SyntheticConfig(max_shapes=1, max_text_lines=0))
    L.seed_everything(0)
    dm = Florence2DataModule(
        synthetic_dir=str(data), tokenizer_vocab_size=600, image_size=128, batch_size=16, num_workers=0,
        tasks=["<CAPTION>", "<OD>"], val_samples_per_task=VAL_SAMPLES, val_batch_size=48, epoch_length=16 * STEPS,
        # From scratch, captions first: mixed from step 0 the model never reads the image (CONTRIBUTING).
        warmup_task_weights={"<CAPTION>": 1}, warmup_task_steps=CAPTION_WARMUP,
    )
    # A near-frozen random DaViT: at 0.1x the encoder still collapsed in 2 of 6 runs, this one included (CONTRIBUTING).
    lit = helpers.module(config_overrides=None, lr=1e-3, warmup_steps=50, val_max_new_tokens=30, min_lr_ratio=0.1,
                         vision_lr_scale=0.01)
    trainer = helpers.trainer(data, STEPS, limit_val_batches=None, gradient_clip_val=1.0)
    before = trainer.validate(lit, dm, verbose=False)[0]
    trainer.fit(lit, dm)
    after = trainer.validate(lit, dm, verbose=False)[0]
    captions = next(batch for batch in dm.val_dataloader() if batch["task"][0] == "<CAPTION>")
    lit.eval()
    with torch.no_grad():
        own = lit(captions)[0].item()
        shuffled = lit({**captions, "pixel_values": captions["pixel_values"].roll(1, dims=0)})[0].item()
    prior = caption_prior(data / "val.jsonl", VAL_SAMPLES)
    print({k: (round(before.get(k, float("nan")), 3), round(v, 3)) for k, v in after.items()},
          {"caption loss own images": own, "shuffled images": shuffled, "caption prior": prior})
    assert after["val/loss"] < 0.4 * before["val/loss"]
    # The captions depend on the image, not just on the prompt ...
    assert shuffled > own + 0.15
    # ... and come out right more often than the best image-blind answer. Measured: 0 untrained, 0.24 trained
    # against a prior of 0.16 (loss 0.30 with the right images, 0.66 with shuffled ones).
    assert before["val/CAPTION/exact_match"] == 0
    assert after["val/CAPTION/exact_match"] >= prior + 0.05
    # OD from scratch does not read the image yet in a run this short (CONTRIBUTING "Training from scratch"):
    # its recall is printed above, not asserted.
