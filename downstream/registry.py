"""Register the backbone and optimizer constructor in whichever OpenMMLab libraries are installed.

MMDetection and MMSegmentation each have their own `MODELS` registry (children of mmengine's), and a config
built in one scope does not see the other's modules, so the one implementation is registered in both.
"""

from __future__ import annotations

import importlib

from downstream.backbone import Florence2DaViT
from downstream.layer_decay import DaViTLayerDecayOptimizerConstructor

_SCOPES = ("mmdet", "mmseg")


def register_modules() -> list[str]:
    """Registers into every installed scope and returns their names; ImportError if neither is installed."""
    from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS

    OPTIM_WRAPPER_CONSTRUCTORS.register_module(module=DaViTLayerDecayOptimizerConstructor, force=True)
    registered, errors = [], []
    for scope in _SCOPES:
        try:
            registry = importlib.import_module(f"{scope}.registry")
        except ImportError as error:  # not installed, or installed without a working mmcv
            errors.append(f"{scope}: {error}")
            continue
        # force=True: re-importing (e.g. a config's custom_imports after a test imported us) must not fail.
        registry.MODELS.register_module(module=Florence2DaViT, force=True)
        registry.OPTIM_WRAPPER_CONSTRUCTORS.register_module(
            module=DaViTLayerDecayOptimizerConstructor, force=True
        )
        registered.append(scope)
    if not registered:
        raise ImportError(
            "downstream registers Florence2DaViT in MMDetection and/or MMSegmentation, but neither imports ("
            + "; ".join(errors)
            + "). Run `bash scripts/install_mmcv.sh` (builds mmcv with ops, installs mmdet and mmseg)."
        )
    return registered
