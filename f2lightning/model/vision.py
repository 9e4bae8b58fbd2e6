"""The image encoder: timm's DaViT in its Florence-2 flavour.

timm already implements DaViT exactly (tests/test_model_equivalence.py checks it against transformers' Florence-2
tower), so we only choose its hyper-parameters. `downstream.Florence2DaViT` builds the same module, which keeps the pre-training
tower and the exported detection / segmentation backbone from drifting apart.
"""

from __future__ import annotations

import timm
from timm.models.davit import DaVit

from f2lightning.model.config import VisionConfig


def create_vision_tower(config: VisionConfig, drop_path_rate: float | None = None) -> DaVit:
    """A headless timm DaViT; `forward_features` gives the last stage map `(B, C, H/32, W/32)`."""
    # `davit_base_fl` carries the Florence-2 block layout (3x3 downsampling, channel attention v2, named
    # blocks); the widths, depths and heads given here replace its sizes. timm gives each stage one `num_heads`
    # for the window attention's heads and the channel attention's groups alike, which is why
    # `Florence2Config.from_hf_config` refuses configs whose `num_groups` differ.
    tower = timm.create_model(
        "davit_base_fl",
        pretrained=False,
        num_classes=0,
        embed_dims=tuple(config.embed_dims),
        depths=tuple(config.depths),
        num_heads=tuple(config.num_heads),
        window_size=config.window_size,
        mlp_ratio=config.mlp_ratio,
        drop_path_rate=config.drop_path_rate if drop_path_rate is None else drop_path_rate,
    )
    # The classifier head's norm is never used by Florence-2 (and has no weights in its checkpoints);
    # removing it keeps DDP from failing on parameters that receive no gradient.
    tower.reset_classifier(0, reset_other=True)
    return tower


def stage_modules(tower: DaVit, stage: int) -> list:
    """Modules of a stage in the paper's numbering (1..4); stage 1 includes the stem."""
    if not 1 <= stage <= len(tower.stages):
        raise ValueError(f"stage must be in 1..{len(tower.stages)}, got {stage}")
    modules = [tower.stages[stage - 1]]
    if stage == 1:
        modules.insert(0, tower.stem)
    return modules
