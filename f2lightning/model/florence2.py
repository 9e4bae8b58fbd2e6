"""Florence-2: DaViT image encoder + projector + BART multi-modal encoder-decoder (paper §3).

Image tokens are prepended to the prompt's token embeddings inside `forward` / `generate`, so callers pass only
prompt tokens. Samples that ask about the same image may share one row of `pixel_values` (`image_index`): the
image encoder, most of a step's compute, then runs once per image instead of once per sample. The composition
is exact against `transformers.Florence2ForConditionalGeneration` with the same weights (see
tests/test_model_equivalence.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import BartConfig, BartForConditionalGeneration
from transformers.modeling_outputs import Seq2SeqLMOutput

from f2lightning.model import checkpoints
from f2lightning.model.config import Florence2Config
from f2lightning.model.projector import ImageProjector
from f2lightning.model.vision import create_vision_tower, stage_modules


class Florence2(nn.Module):
    def __init__(self, config: Florence2Config) -> None:
        super().__init__()
        config.check()
        self.config = config
        self.vision_tower = create_vision_tower(config.vision)
        self.projector = ImageProjector(
            vision_dim=config.vision.embed_dims[-1],
            d_model=config.text.d_model,
            max_positions=config.vision.max_position_embeddings,
            max_frames=config.vision.max_temporal_embeddings,
        )
        bart_config = BartConfig(**dataclasses.asdict(config.text), tie_word_embeddings=True)
        # SDPA everywhere: BART supports it and it is the fastest portable kernel on CPU and CUDA.
        bart_config._attn_implementation = "sdpa"
        self.language_model = BartForConditionalGeneration(bart_config)
        self._compiled_image_encoder = None

    # ------------------------------------------------------------------ inputs
    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`(B, 3, H, W)` → `(B, 1 + H/32 * W/32, d_model)` image tokens."""
        if self._compiled_image_encoder is not None:
            return self._compiled_image_encoder(pixel_values)
        return self._encode_image(pixel_values)

    def _encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.projector(self.vision_tower.forward_features(pixel_values))

    def compile_image_encoder(self, **compile_options: Any) -> None:
        """`torch.compile` the image encoder (DaViT + projector) as one graph; weights and state-dict keys are unchanged.

        The image encoder is most of a generation call, and in inference it compiles well (DaViT's many LayerNorms,
        window reshapes and depthwise convs fuse). Each new image size or batch size pays the compile time again.
        """
        self._compiled_image_encoder = torch.compile(self._encode_image, **compile_options)

    def embed_inputs(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder input `[image tokens, prompt embeddings]` and its mask (all ones over the image part).

        `image_index[i]` is the row of `pixel_values` that sample `i` shows (default: row `i`). Gathering the
        encoded rows gives the same loss and gradients as encoding a copy of the image for every sample.
        """
        image_tokens = self.encode_image(pixel_values)
        if image_index is not None:
            image_tokens = image_tokens.index_select(0, image_index)
        prompt_embeds = self.language_model.get_input_embeddings()(input_ids)
        inputs_embeds = torch.cat([image_tokens.to(prompt_embeds.dtype), prompt_embeds], dim=1)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        image_mask = attention_mask.new_ones(image_tokens.shape[:2])
        return inputs_embeds, torch.cat([image_mask, attention_mask], dim=1)

    # ------------------------------------------------------------------ training / scoring
    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
    ) -> Seq2SeqLMOutput:
        """Logits over the target; with `labels` (padding = -100) also the token cross-entropy (paper eq. 1).

        Without `decoder_input_ids`, BART builds them by shifting `labels` right behind the decoder start token.
        """
        inputs_embeds, attention_mask = self.embed_inputs(
            pixel_values, input_ids, attention_mask, image_index
        )
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            labels=labels,
            use_cache=False,
        )

    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
        **generate_kwargs: Any,
    ) -> Any:
        """Batched generation (beam search and the rest of `transformers`' `generate` options).

        The image and the prompt are encoded once; beams reuse the encoder output and the decoder's KV cache.
        Prompts must be right-padded with `attention_mask` marking the real tokens: BART's learned positions then
        match the unpadded prompt, which makes a batch generate exactly what each sample generates alone.
        """
        inputs_embeds, attention_mask = self.embed_inputs(
            pixel_values, input_ids, attention_mask, image_index
        )
        return self.language_model.generate(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, **generate_kwargs
        )

    # ------------------------------------------------------------------ freezing
    def freeze(
        self,
        vision: bool = False,
        vision_stages: int = 0,
        projector: bool = False,
        language: bool = False,
    ) -> None:
        """Turn gradients off with `requires_grad_(False)` (never a made-up attribute; CONTRIBUTING.md, "Design rules").

        `vision_stages=k` freezes DaViT stages 1..k in the paper's numbering (stage 1 includes the stem);
        `vision=True` freezes the whole image encoder. Frozen parts keep their train/eval mode: use
        `frozen_modules()` to put them in eval mode (dropout / drop-path off) after `.train()`.
        """
        num_stages = len(self.vision_tower.stages)
        if not 0 <= vision_stages <= num_stages:
            raise ValueError(f"vision_stages must be in 0..{num_stages}, got {vision_stages}")
        for module in self.frozen_modules(vision, vision_stages, projector, language):
            module.requires_grad_(False)

    def frozen_modules(
        self, vision: bool = False, vision_stages: int = 0, projector: bool = False, language: bool = False
    ) -> list[nn.Module]:
        modules: list[nn.Module] = []
        if vision:
            modules.append(self.vision_tower)
        else:
            for stage in range(1, vision_stages + 1):
                modules.extend(stage_modules(self.vision_tower, stage))
        if projector:
            modules.append(self.projector)
        if language:
            modules.append(self.language_model)
        return modules

    # ------------------------------------------------------------------ tokens
    def resize_token_embeddings(self, vocab_size: int, pad_to_multiple_of: int | None = None) -> None:
        """Grow or shrink the shared embedding + LM head (e.g. after adding `<loc_*>` tokens)."""
        embeddings = self.language_model.resize_token_embeddings(
            vocab_size, pad_to_multiple_of=pad_to_multiple_of
        )
        self.config.text.vocab_size = embeddings.num_embeddings
        # BART keeps a (zero, untrained) bias over the vocabulary that resize leaves alone.
        self.language_model._resize_final_logits_bias(embeddings.num_embeddings)

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def from_pretrained(cls, path: str | Path, **config_overrides: Any) -> Florence2:
        """Load a directory or weights file: transformers-native Florence-2, Microsoft remote code, or ours.

        The tokenizer is not part of the model: `Florence2Processor.from_pretrained(path)` reads it.
        """
        checkpoint = checkpoints.read_florence2(Path(path), **config_overrides)
        model = cls(checkpoint.config)
        checkpoints.load_weights(
            model, checkpoint.state_dict, source=checkpoint.source, config_source=checkpoint.config_source
        )
        model.language_model.tie_weights()
        return model

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the transformers-native layout (config.json, model.safetensors); `Florence2Processor.save_pretrained`
        adds the tokenizer files."""
        return checkpoints.save_florence2(
            Path(path), self.config, self.state_dict(), self.language_model.generation_config
        )
