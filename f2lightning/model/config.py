"""Model configuration: one dataclass, named presets, and conversion from transformers' config.json.

Sizes follow Table 15 of the Florence-2 paper. The vision tower is timm's DaViT in its Florence-2 flavour
(3x3 downsampling convs, channel attention v2), so the same numbers also describe the backbone that
`downstream/` registers in MMDetection and MMSegmentation.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class VisionConfig:
    embed_dims: tuple[int, ...] = (128, 256, 512, 1024)
    depths: tuple[int, ...] = (1, 1, 9, 1)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    window_size: int = 12
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.1
    # The projector's learned 2-D table covers feature maps up to this many cells per side (50 * 32 px = 1600 px).
    max_position_embeddings: int = 50
    max_temporal_embeddings: int = 100


@dataclass
class TextConfig:
    """BART encoder-decoder hyper-parameters (the keys keep BartConfig's names)."""

    vocab_size: int = 51289
    d_model: int = 768
    encoder_layers: int = 6
    decoder_layers: int = 6
    encoder_attention_heads: int = 12
    decoder_attention_heads: int = 12
    encoder_ffn_dim: int = 3072
    decoder_ffn_dim: int = 3072
    # Image tokens + prompt share the encoder's positions: 577 image tokens at 768 px leave 447 for the prompt.
    max_position_embeddings: int = 1024
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.1
    scale_embedding: bool = False
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    decoder_start_token_id: int = 2
    forced_bos_token_id: int | None = 0
    forced_eos_token_id: int | None = 2


@dataclass
class Florence2Config:
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    image_size: int = 768
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD
    # Id of the `<image>` placeholder that transformers' Florence-2 puts where image tokens go. Our model
    # prepends image embeddings directly and only needs the id to write a transformers-native checkpoint.
    image_token_id: int | None = None

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> Florence2Config:
        """`tiny` (tests, CPU demo), `base` (Florence-2-B, 232M) or `large` (Florence-2-L, 771M)."""
        try:
            config = PRESETS[name]()
        except KeyError:
            raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
        return config.replace(**overrides)

    def replace(self, **overrides: Any) -> Florence2Config:
        """Copy with top-level fields replaced; `vision` / `text` accept dicts of their fields."""
        for part, part_cls in (("vision", VisionConfig), ("text", TextConfig)):
            if isinstance(overrides.get(part), dict):
                overrides[part] = dataclasses.replace(getattr(self, part), **overrides[part])
            elif part in overrides and not isinstance(overrides[part], part_cls):
                raise TypeError(f"{part} must be a {part_cls.__name__} or a dict")
        return dataclasses.replace(self, **overrides)

    @property
    def num_image_tokens(self) -> int:
        side = self.image_size // 32
        return side * side + 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Florence2Config:
        data = dict(data)
        vision = VisionConfig(**_tuples(data.pop("vision", {})))
        text = TextConfig(**data.pop("text", {}))
        return cls(vision=vision, text=text, **_tuples(data))

    @classmethod
    def from_hf_config(cls, source: dict[str, Any] | str | Path) -> Florence2Config:
        """Read a transformers Florence-2 `config.json` (native `florence2` or Microsoft remote code), any size."""
        where = "config"
        if not isinstance(source, dict):
            path = Path(source)
            if path.is_dir():
                path = path / "config.json"
            where = str(path)
            try:
                source = json.loads(path.read_text())
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not valid JSON ({error})") from None
        if not isinstance(source, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(source).__name__}")
        vision_src = source.get("vision_config") or {}
        text_src = source.get("text_config") or {}
        for name, section in (("vision_config", vision_src), ("text_config", text_src)):
            if not isinstance(section, dict):
                raise ValueError(f"{where}: `{name}` must be an object, got {type(section).__name__}")
        vision_defaults = VisionConfig()
        num_heads = tuple(vision_src.get("num_heads", vision_defaults.num_heads))
        # transformers (and the remote code) give the channel attention `num_groups` groups and the window
        # attention `num_heads` heads; timm's DaVit takes one `num_heads` per stage for both, so a config
        # that tells them apart would silently become a different model.
        num_groups = tuple(vision_src.get("num_groups", num_heads))
        if num_groups != num_heads:
            raise ValueError(
                f"{where}: vision_config.num_groups {list(num_groups)} differs from vision_config.num_heads "
                f"{list(num_heads)}; the DaViT here (timm's) uses one number per stage for the channel attention's "
                "groups and the window attention's heads, so this model cannot be built (released Florence-2 "
                "checkpoints have them equal)"
            )
        # The remote-code config names the widths `dim_embed` and nests the embedding table sizes.
        vision = VisionConfig(
            embed_dims=tuple(
                vision_src.get("embed_dim") or vision_src.get("dim_embed") or vision_defaults.embed_dims
            ),
            depths=tuple(vision_src.get("depths", vision_defaults.depths)),
            num_heads=num_heads,
            window_size=vision_src.get("window_size", vision_defaults.window_size),
            mlp_ratio=vision_src.get("mlp_ratio", vision_defaults.mlp_ratio),
            drop_path_rate=vision_src.get("drop_path_rate", vision_defaults.drop_path_rate),
            max_position_embeddings=vision_src.get("max_position_embeddings")
            or (vision_src.get("image_pos_embed") or {}).get("max_pos_embeddings")
            or vision_defaults.max_position_embeddings,
            max_temporal_embeddings=vision_src.get("max_temporal_embeddings")
            or (vision_src.get("visual_temporal_embedding") or {}).get("max_temporal_embeddings")
            or vision_defaults.max_temporal_embeddings,
        )
        text_fields = {f.name for f in dataclasses.fields(TextConfig)}
        text = TextConfig(**{k: v for k, v in text_src.items() if k in text_fields})
        if "vocab_size" not in text_src and "vocab_size" in source:
            text.vocab_size = source["vocab_size"]
        config = cls(vision=vision, text=text, image_token_id=source.get("image_token_id"))
        config.check(where, hf_names=True)
        return config

    def check(self, where: str = "config", hf_names: bool = False) -> None:
        """Raise a ValueError naming `where` and the fields when the sizes cannot build a model.

        Without this, timm fails with an empty AssertionError (stage lists of different lengths) and a width that
        the heads do not divide fails only in the first forward pass. `hf_names` names the fields as a
        transformers config.json spells them (`vision_config.embed_dim`), otherwise as this dataclass does.
        """
        vision, text = self.vision, self.text

        def name(part: str, key: str) -> str:
            if not hf_names:
                return f"{part}.{key}"
            return f"{part}_config.{'embed_dim' if key == 'embed_dims' else key}"

        problems = []
        stage_lists = {key: getattr(vision, key) for key in ("embed_dims", "depths", "num_heads")}
        for key, values in stage_lists.items():
            if not values or not all(_positive_int(v) for v in values):
                problems.append(
                    f"{name('vision', key)} must be a non-empty list of positive integers, got {values!r}"
                )
        if not problems:
            if len({len(values) for values in stage_lists.values()}) > 1:
                problems.append(
                    "one entry per stage in "
                    + ", ".join(
                        f"{name('vision', key)} {list(values)}" for key, values in stage_lists.items()
                    )
                )
            problems += [
                f"{name('vision', 'embed_dims')}[{i}] = {dim} is not divisible by {name('vision', 'num_heads')}[{i}] = {heads}"
                for i, (dim, heads) in enumerate(zip(vision.embed_dims, vision.num_heads))
                if dim % heads
            ]
        for part, section, keys in (
            ("vision", vision, ("window_size", "max_position_embeddings", "max_temporal_embeddings")),
            ("text", text, ("vocab_size", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
                            "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "max_position_embeddings")),
        ):  # fmt: skip
            problems += [
                f"{name(part, key)} must be a positive integer, got {getattr(section, key)!r}"
                for key in keys
                if not _positive_int(getattr(section, key))
            ]
        if not problems:
            problems += [
                f"{name('text', 'd_model')} = {text.d_model} is not divisible by {name('text', key)} = {getattr(text, key)}"
                for key in ("encoder_attention_heads", "decoder_attention_heads")
                if text.d_model % getattr(text, key)
            ]
        if problems:
            raise ValueError(f"{where}: the model sizes are inconsistent:\n  - " + "\n  - ".join(problems))


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _tuples(data: dict[str, Any]) -> dict[str, Any]:
    # JSON and YAML give lists where the dataclasses declare tuples.
    return {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}


# fmt: off
def _tiny() -> Florence2Config:
    return Florence2Config(
        vision=VisionConfig(
            embed_dims=(32, 64, 96, 128), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4), window_size=4,
            drop_path_rate=0.0,
        ),
        text=TextConfig(
            vocab_size=4096, d_model=128, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=512, decoder_ffn_dim=512, max_position_embeddings=512,
            dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        ),
        image_size=192,
    )


def _base() -> Florence2Config:
    return Florence2Config()


def _large() -> Florence2Config:
    return Florence2Config(
        vision=VisionConfig(embed_dims=(256, 512, 1024, 2048), num_heads=(8, 16, 32, 64)),
        text=TextConfig(
            d_model=1024, encoder_layers=12, decoder_layers=12, encoder_attention_heads=16,
            decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096,
        ),
    )

# fmt: on


PRESETS = {"tiny": _tiny, "base": _base, "large": _large}
