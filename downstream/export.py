"""Export the image encoder of any supported checkpoint as a plain backbone file.

The output, `{'state_dict': {timm DaViT keys}, 'meta': {...}}`, is what MMDetection / MMSegmentation expect
from `init_cfg=dict(type='Pretrained', checkpoint=...)`, so downstream configs never need the full model.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from downstream.backbone import ARCHS
from downstream.weights import read_backbone_state_dict


def infer_arch(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Widths and depths read off the weights, and the named arch they match (heads are not in the weights)."""
    num_stages = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"stages\.(\d+)\.", k)))
    embed_dims = [state["stem.conv.weight"].shape[0]]
    embed_dims += [state[f"stages.{i}.downsample.conv.weight"].shape[0] for i in range(1, num_stages)]
    depths = [
        1 + max(int(m.group(1)) for k in state if (m := re.match(rf"stages\.{i}\.blocks\.(\d+)\.", k)))
        for i in range(num_stages)
    ]
    name = next(
        (n for n, a in ARCHS.items() if list(a["embed_dims"]) == embed_dims and list(a["depths"]) == depths),
        None,
    )
    return {"arch": name, "embed_dims": embed_dims, "depths": depths}


def export_backbone(src: str | Path, out: str | Path, prefix: str | None = None) -> dict[str, Any]:
    """Write `src`'s DaViT weights to `out`; returns (and prints) a summary of what was converted."""
    state, source_format = read_backbone_state_dict(src, prefix=prefix)
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    meta = {
        "source": str(src),
        "source_format": source_format,
        **infer_arch(state),
        "num_tensors": len(state),
        "num_parameters": sum(v.numel() for v in state.values()),
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "meta": meta}, out)
    summary = {**meta, "out": str(out)}
    print(
        f"exported {summary['num_tensors']} tensors ({summary['num_parameters'] / 1e6:.1f}M parameters) "
        f"of a DaViT {summary['arch'] or 'custom'} (embed_dims={summary['embed_dims']}, depths={summary['depths']}) "
        f"from {src} [{source_format} format] to {out}"
    )
    return summary
