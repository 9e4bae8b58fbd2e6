"""`f2lightning export-backbone SRC -o OUT.pth`: the DaViT of any checkpoint as a plain backbone file.

Needs no OpenMMLab package: the file is a `{'state_dict', 'meta'}` dict that MMDetection / MMSegmentation read
through `init_cfg=dict(type='Pretrained', checkpoint=OUT)` (docs/downstream.md).
"""

from __future__ import annotations

import argparse

from f2lightning.model.checkpoints import export_backbone


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export-backbone",
        help="export the DaViT image encoder of a checkpoint for MMDetection / MMSegmentation",
        description="Convert the image encoder of an f2lightning checkpoint (Lightning .ckpt or saved model) or "
        "a released Florence-2 checkpoint (transformers or remote-code layout, file or directory) into a "
        "plain backbone file for `init_cfg=dict(type='Pretrained', checkpoint=OUT)`.",
    )
    parser.add_argument("src", help="checkpoint file or directory")
    parser.add_argument("-o", "--output", required=True, help="backbone file to write, e.g. davit-b.pth")
    parser.add_argument("--prefix", default=None, help="only keys under this prefix (e.g. 'backbone.')")
    parser.set_defaults(func=export_backbone_command)


def export_backbone_command(args: argparse.Namespace) -> int:
    export_backbone(args.src, args.output, prefix=args.prefix)
    return 0
