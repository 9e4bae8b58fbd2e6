"""Every config under configs/downstream builds through mmengine and trains; the main ones run end to end
(train + evaluate) through mmengine's Runner on tiny COCO / ADE20K-format datasets written here."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("mmdet")
pytest.importorskip("mmseg")

from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from mmengine.structures import PixelData
from PIL import Image

import downstream  # noqa: F401  (registers Florence2DaViT like a config's custom_imports)

pytestmark = pytest.mark.downstream

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "downstream"
CONFIGS = sorted(CONFIG_DIR.rglob("*.py"))
MAIN_CONFIGS = [
    "mmdet/mask-rcnn_florence2-davit-b_fpn_ms-1x_coco.py",
    "mmdet/dino-4scale_florence2-davit-b_1x_coco.py",
    "mmseg/upernet_florence2-davit-b_4xb16-40k_ade20k-512x512.py",
]
TINY = dict(embed_dims=(32, 64, 96, 128), depths=(1, 1, 2, 1), num_heads=(1, 2, 3, 4), window_size=4)
# DINO's 900 queries need at least as many multi-scale tokens: 320 px gives 40² + 20² + 10² + 5² = 2125.
IMAGE_SIZE = {"MaskRCNN": 128, "DINO": 320, "EncoderDecoder": 64}


def _scope(cfg: Config) -> str:
    return cfg.default_scope


def _image_size(cfg: Config) -> int:
    return IMAGE_SIZE[cfg.model.type]


def tiny_config(path: Path) -> Config:
    """The config with a tiny backbone (and matching neck / head widths), no pretrained file, and for UperNet
    narrow heads."""
    cfg = Config.fromfile(str(path))
    backbone = cfg.model.backbone
    assert backbone.type == "Florence2DaViT"
    backbone.arch = copy.deepcopy(TINY)
    backbone.init_cfg = None
    dims = list(TINY["embed_dims"])
    if cfg.model.type == "EncoderDecoder":
        cfg.model.decode_head.in_channels = [dims[i] for i in cfg.model.decode_head.in_index]
        cfg.model.auxiliary_head.in_channels = dims[cfg.model.auxiliary_head.in_index]
        cfg.model.decode_head.channels = 64  # 512 in the config: most of a CPU step's cost at this size
        cfg.model.auxiliary_head.channels = 32
        cfg.model.data_preprocessor.size = (64, 64)
    else:
        cfg.model.neck.in_channels = [dims[i] for i in backbone.out_indices]
    return cfg


def _build(cfg: Config) -> torch.nn.Module:
    init_default_scope(_scope(cfg))
    if _scope(cfg) == "mmdet":
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    model = revert_sync_batchnorm(MODELS.build(cfg.model))  # SyncBN needs a process group
    model.init_weights()
    return model


def _batch(cfg: Config) -> dict:
    size = _image_size(cfg)
    if _scope(cfg) == "mmdet":
        from mmdet.testing import demo_mm_inputs

        return demo_mm_inputs(
            batch_size=2,
            image_shapes=[(3, size, size)] * 2,
            num_items=[3, 2],
            num_classes=80,
            with_mask=cfg.model.type == "MaskRCNN",
        )
    from mmseg.structures import SegDataSample

    samples = []
    for _ in range(2):
        sample = SegDataSample(
            metainfo=dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size))
        )
        sample.gt_sem_seg = PixelData(data=torch.randint(0, 150, (1, size, size)))
        samples.append(sample)
    return dict(
        inputs=[torch.randint(0, 256, (3, size, size), dtype=torch.uint8) for _ in range(2)],
        data_samples=samples,
    )


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_config_builds_and_takes_a_training_step(path):
    torch.manual_seed(0)
    cfg = tiny_config(path)
    model = _build(cfg)
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    backbone = model.backbone
    frozen = {n: p.detach().clone() for n, p in backbone.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in backbone.named_parameters() if p.requires_grad}
    num_frozen_stages = cfg.model.backbone.frozen_stages
    assert backbone.frozen_stages == num_frozen_stages
    assert bool(frozen) == (num_frozen_stages > 0) and bool(trainable) == (num_frozen_stages < 4)

    model.train()
    losses = model.train_step(_batch(cfg), optim_wrapper)
    assert all(torch.isfinite(v) for k, v in losses.items() if "loss" in k)
    current = dict(backbone.named_parameters())
    assert all(torch.equal(current[n], v) for n, v in frozen.items())
    assert any(not torch.equal(current[n], v) for n, v in trainable.items()) or not trainable


def test_layer_decay_constructor_scales_backbone_learning_rates():
    cfg = tiny_config(CONFIG_DIR / MAIN_CONFIGS[2])
    model = _build(cfg)
    optimizer = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
    base_lr, rate = cfg.optim_wrapper.optimizer.lr, cfg.optim_wrapper.paramwise_cfg.decay_rate
    num_layers = sum(TINY["depths"])
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    stem = model.backbone.stem.conv.weight
    head = model.decode_head.conv_seg.weight
    last_block_bias = model.backbone.stages[3].blocks[0].spatial_block.attn.qkv.bias
    assert group_of[id(stem)]["lr"] == pytest.approx(base_lr * rate ** (num_layers + 1))
    assert group_of[id(head)]["lr"] == pytest.approx(base_lr)
    assert group_of[id(last_block_bias)]["lr"] == pytest.approx(base_lr * rate)
    assert group_of[id(last_block_bias)]["weight_decay"] == 0.0
    assert group_of[id(stem)]["weight_decay"] == cfg.optim_wrapper.optimizer.weight_decay
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


# --- end to end through mmengine's Runner ---------------------------------------------------------------


def _shrink(pipeline: list, size: int) -> None:
    """Scale a pipeline's resize / crop sizes down to `size` so a run costs seconds on a CPU."""
    for step in pipeline:
        kind = step["type"]
        if kind == "RandomChoiceResize":
            step["scales"] = [(size * 2, size)]
        elif kind in ("Resize", "RandomResize") and "scale" in step:
            step["scale"] = (size * 2, size)
        elif kind == "RandomCrop":
            step["crop_size"] = (
                (size // 2, size) if step.get("crop_type") == "absolute_range" else (size, size)
            )
        elif kind == "RandomChoice":
            for branch in step["transforms"]:
                _shrink(branch, size)


def _write_coco(root: Path, size: int, num_images: int) -> Path:
    """COCO-format instances file + images: a few coloured rectangles of COCO classes `person` and `car`."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        pixels = np.full((size, size, 3), 40, dtype=np.uint8)
        for k in range(2):
            x, y = (int(v) for v in rng.integers(0, size // 2, 2))
            w, h = (int(v) for v in rng.integers(size // 4, size // 2, 2))
            pixels[y : y + h, x : x + w] = rng.integers(80, 255, 3)
            polygon = [x, y, x + w, y, x + w, y + h, x, y + h]
            annotations.append(
                dict(
                    id=len(annotations) + 1,
                    image_id=image_id,
                    category_id=(1, 3)[k],  # person, car
                    bbox=[x, y, w, h],
                    area=w * h,
                    iscrowd=0,
                    segmentation=[polygon],
                )
            )
        Image.fromarray(pixels).save(root / "images" / f"{image_id:06d}.jpg")
        images.append(dict(id=image_id, file_name=f"{image_id:06d}.jpg", width=size, height=size))
    ann_file = root / "instances.json"
    # All 80 COCO classes, as a real instances file lists them: the detector predicts any of its 80 labels, and
    # CocoMetric maps label index -> category id through this list.
    from mmdet.datasets import CocoDataset

    categories = [dict(id=i + 1, name=name) for i, name in enumerate(CocoDataset.METAINFO["classes"])]
    ann_file.write_text(json.dumps(dict(images=images, annotations=annotations, categories=categories)))
    return ann_file


def _write_ade20k(root: Path, size: int, num_images: int) -> None:
    """ADE20K layout: images/{training,validation}/*.jpg and annotations/*/*.png (0 = ignore, 1..150)."""
    rng = np.random.default_rng(0)
    for split in ("training", "validation"):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        for i in range(num_images):
            labels = np.zeros((size, size), dtype=np.uint8)
            labels[: size // 2] = rng.integers(1, 151)
            labels[size // 2 :] = rng.integers(1, 151)
            image = (labels[..., None] * np.array([1, 2, 3], dtype=np.uint8)) % 255
            Image.fromarray(image.astype(np.uint8)).save(root / "images" / split / f"{i}.jpg")
            Image.fromarray(labels).save(root / "annotations" / split / f"{i}.png")


def _small_loaders(cfg: Config) -> None:
    for name in ("train_dataloader", "val_dataloader"):
        cfg[name].update(batch_size=2, num_workers=0, persistent_workers=False)
    cfg.test_dataloader = cfg.val_dataloader


def _runner_config(rel_path: str, tmp_path: Path) -> Config:
    cfg = tiny_config(CONFIG_DIR / rel_path)
    size = _image_size(cfg)
    cfg.work_dir = str(tmp_path / "work")
    cfg.log_level = "WARNING"
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.checkpoint = None  # nothing to keep from a tiny run
    _shrink(cfg.train_dataloader.dataset.pipeline, size)
    _shrink(cfg.val_dataloader.dataset.pipeline, size)
    _small_loaders(cfg)
    if _scope(cfg) == "mmdet":
        ann_file = _write_coco(tmp_path / "coco", size, num_images=4)
        for loader in (cfg.train_dataloader, cfg.val_dataloader):
            loader.dataset.update(
                data_root=str(tmp_path / "coco"), ann_file=str(ann_file), data_prefix=dict(img="images/")
            )
        cfg.val_evaluator.ann_file = str(ann_file)
        if cfg.model.type == "MaskRCNN":
            # Two iterations leave every RoI-head score under the default 0.05 threshold; CocoMetric then has
            # nothing to score. Keep all boxes so the evaluation path itself is exercised.
            cfg.model.test_cfg.rcnn.score_thr = 0.0
        # val_begin past the end: evaluate once, below, instead of also after the last epoch.
        cfg.train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=1, val_interval=1, val_begin=2)
    else:
        _write_ade20k(tmp_path / "ade", size, num_images=4)
        cfg.train_dataloader.dataset.data_root = str(tmp_path / "ade")
        cfg.val_dataloader.dataset.data_root = str(tmp_path / "ade")
        cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=2, val_interval=2, val_begin=3)
    cfg.test_evaluator = cfg.val_evaluator
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize("rel_path", MAIN_CONFIGS)
def test_main_config_trains_and_evaluates(rel_path, tmp_path):
    torch.manual_seed(0)
    cfg = _runner_config(rel_path, tmp_path)
    runner = Runner.from_cfg(cfg)
    runner.train()
    metrics = runner.val()
    if _scope(cfg) == "mmdet":
        expected = {"coco/bbox_mAP"} | ({"coco/segm_mAP"} if cfg.model.type == "MaskRCNN" else set())
    else:
        expected = {"mIoU"}
    assert expected <= set(metrics)
    assert all(np.isfinite(metrics[k]) for k in expected)
    assert runner.iter >= 2
