"""Florence-2's DaViT image encoder as an MMDetection / MMSegmentation backbone.

`custom_imports=dict(imports=['downstream'])` in a config registers `Florence2DaViT` and
`DaViTLayerDecayOptimizerConstructor` in every installed OpenMMLab library (see docs/downstream.md).
"""

try:
    import mmengine  # noqa: F401  (the backbone is an mmengine BaseModule)
except ImportError as error:
    raise ImportError(
        "downstream needs mmengine and MMDetection and/or MMSegmentation; run `bash scripts/install_mmcv.sh`"
    ) from error

from downstream.backbone import Florence2DaViT
from downstream.layer_decay import DaViTLayerDecayOptimizerConstructor
from downstream.registry import register_modules
from f2lightning.model.checkpoints import export_backbone

REGISTERED_SCOPES = register_modules()

__all__ = ["REGISTERED_SCOPES", "DaViTLayerDecayOptimizerConstructor", "Florence2DaViT", "export_backbone"]
