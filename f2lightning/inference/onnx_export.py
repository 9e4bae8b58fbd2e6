"""`f2lightning export-onnx CKPT -o DIR`: a checkpoint as ONNX graphs that onnxruntime runs without a torch model.

Four graphs, traced by `torch.onnx.export`'s TorchScript exporter (`dynamo=False`; why: `export_model`):

* `image_encoder.onnx`: `pixel_values (B, 3, H, W)` → `image_features (B, N, d_model)`, DaViT + projector
  (`Florence2.encode_image`);
* `encoder.onnx`: `image_features`, prompt `input_ids` / `attention_mask` (right-padded) → BART's
  `encoder_hidden_states` and the merged `encoder_attention_mask` (`Florence2.embed_inputs` + BART's encoder: what
  the decoder attends to);
* `decoder_first.onnx`: the first decoder step, `decoder_input_ids (B, T)` + `encoder_hidden_states` +
  `encoder_attention_mask` → the last position's `logits (B, V)`, then per layer the self-attention cache
  `present.{i}.key|value` and the cross-attention keys / values `cross.{i}.key|value`;
* `decoder.onnx`: every later step, `decoder_input_ids (B, 1)` + `encoder_attention_mask` + `past.{i}.key|value`
  + `cross.{i}.key|value` → `logits` + `present.{i}.key|value` (the past grown by one position). The encoder
  states themselves are not an input: their only use in a later step, the cross-attention projections, is cached.

Beside them: the processor's tokenizer files (`Florence2Processor.save_pretrained`) and `onnx_config.json` (input
resolution and normalisation, special token ids, layer / head counts, vocabulary size, generation settings): all
that `f2lightning.inference.onnx_runtime.OnnxFlorence2` reads. Dynamic axes: batch, image height / width, prompt,
encoder and past lengths.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import BartForConditionalGeneration, DynamicCache, EncoderDecoderCache, GenerationConfig
from transformers.modeling_outputs import BaseModelOutput

from f2lightning.model import Florence2
from f2lightning.processor import Florence2Processor

INSTALL_HINT = 'pip install "f2lightning[onnx]"'
CONFIG_FILE = "onnx_config.json"
GRAPHS = ("image_encoder", "encoder", "decoder_first", "decoder")
OPSET = 17

# transformers 5.2x renamed the decoder cache argument and output field (`past_key_values` -> `cache`).
_CACHE = (
    "cache"
    if "cache" in inspect.signature(BartForConditionalGeneration.forward).parameters
    else "past_key_values"
)
# The generation settings the runner implements, in `onnx_config.json`'s "generation".
_SEARCH_SETTINGS = (
    "forced_bos_token_id", "forced_eos_token_id", "early_stopping", "length_penalty", "no_repeat_ngram_size",
)  # fmt: skip
# Any other setting that differs from transformers' default would make onnxruntime generate something else than
# `f2lightning predict`, so the export refuses it. These are copied as token ids or do not touch the search.
_ALSO_ALLOWED = {
    "bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id",
    "use_cache", "output_attentions", "output_hidden_states", "transformers_version", "_from_model_config",
}  # fmt: skip


def _setting(generation: GenerationConfig, key: str) -> Any:
    """A generation setting as `generate` applies it: transformers 5 keeps unset ones as None and fills them from
    its defaults at generation time (4.x stores the defaults themselves)."""
    value = getattr(generation, key)
    if value is None:
        defaults = getattr(GenerationConfig, "_get_default_generation_params", dict)()
        value = defaults.get(key)
    return value


class MissingOnnxExtra(ImportError):
    """A package of the `onnx` extra is not installed."""


def require(module: str) -> Any:
    """Import an optional dependency of the ONNX extra, or fail with the command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingOnnxExtra(f"ONNX export and inference need {module}: {INSTALL_HINT}") from error


# ------------------------------------------------------------------------------------------------ graph wrappers
class _ImageEncoder(nn.Module):
    def __init__(self, model: Florence2) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model._encode_image(pixel_values)


class _Encoder(nn.Module):
    """`Florence2.embed_inputs` after the image encoder, then BART's encoder: what the decoder attends to."""

    def __init__(self, model: Florence2) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, image_features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        prompt_embeds = self.model.language_model.get_input_embeddings()(input_ids)
        inputs_embeds = torch.cat([image_features.to(prompt_embeds.dtype), prompt_embeds], dim=1)
        mask = torch.cat([attention_mask.new_ones(image_features.shape[:2]), attention_mask], dim=1)
        encoder = self.model.language_model.get_encoder()
        hidden = encoder(inputs_embeds=inputs_embeds, attention_mask=mask).last_hidden_state
        return hidden, mask


class _DecoderFirst(nn.Module):
    """The first step: BART fills an empty cache with the self-attention states and the cross-attention keys /
    values, which later steps reuse instead of projecting the encoder states again in every layer."""

    def __init__(self, model: Florence2) -> None:
        super().__init__()
        self.lm = model.language_model

    def forward(
        self,
        decoder_input_ids: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        output = self.lm(
            encoder_outputs=BaseModelOutput(last_hidden_state=encoder_hidden_states),
            attention_mask=encoder_attention_mask,
            decoder_input_ids=decoder_input_ids,
            use_cache=True,
            **{_CACHE: cache},
        )
        self_cache, cross_cache = cache.self_attention_cache, cache.cross_attention_cache
        states = [
            tensor
            for own, cross in zip(self_cache.layers, cross_cache.layers)
            for tensor in (own.keys, own.values, cross.keys, cross.values)
        ]
        return (output.logits[:, -1], *states)


class _Decoder(nn.Module):
    """A later step: the flat past / cross tensors become transformers' `EncoderDecoderCache` (cross-attention
    marked as computed, so BART reads it instead of projecting `encoder_hidden_states`)."""

    def __init__(self, model: Florence2) -> None:
        super().__init__()
        self.lm = model.language_model
        self.layers = model.config.text.decoder_layers

    def forward(
        self, decoder_input_ids: torch.Tensor, encoder_attention_mask: torch.Tensor, *states: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        own = [(states[4 * i], states[4 * i + 1]) for i in range(self.layers)]
        cross = [(states[4 * i + 2], states[4 * i + 3]) for i in range(self.layers)]
        cache = EncoderDecoderCache(DynamicCache(own), DynamicCache(cross))
        # BART's cross-attention only asks the cache for its length: the values come from `cross`.
        batch, _, length, _ = cross[0][0].shape
        placeholder = cross[0][0].new_zeros(batch, length, self.lm.config.d_model)
        output = self.lm(
            encoder_outputs=BaseModelOutput(last_hidden_state=placeholder),
            attention_mask=encoder_attention_mask,
            decoder_input_ids=decoder_input_ids,
            use_cache=True,
            **{_CACHE: cache},
        )
        present = [t for layer in cache.self_attention_cache.layers for t in (layer.keys, layer.values)]
        return (output.logits[:, -1], *present)


# ------------------------------------------------------------------------------------------------ export
def state_names(prefix: str, layers: int) -> list[str]:
    """Flat names of the decoder's self-attention cache, layer by layer: `{prefix}.{i}.key`, `{prefix}.{i}.value`."""
    return [f"{prefix}.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]


def _interleaved(layers: int, first: str) -> list[str]:
    """`{first}.{i}.key`, `{first}.{i}.value`, `cross.{i}.key`, `cross.{i}.value` for every layer (the order the
    wrappers take and return them)."""
    return [f"{p}.{i}.{k}" for i in range(layers) for p in (first, "cross") for k in ("key", "value")]


def onnx_config(model: Florence2, processor: Florence2Processor) -> dict[str, Any]:
    """What the runner needs besides the graphs and the tokenizer."""
    config, text = model.config, model.config.text
    generation = model.language_model.generation_config
    unsupported = sorted(set(generation.to_diff_dict()) - set(_SEARCH_SETTINGS) - _ALSO_ALLOWED)
    if unsupported:
        raise ValueError(
            f"the model's generation_config sets {unsupported}, which the onnxruntime generation does not "
            "implement; reset them to transformers' defaults before exporting"
        )
    eos = generation.eos_token_id
    return {
        "image_size": config.image_size,
        # The projector's position table and BART's position table bound the image size the runner may ask for.
        "max_image_size": config.vision.max_position_embeddings * 32,
        "max_encoder_length": text.max_position_embeddings,
        "image_mean": list(config.image_mean),
        "image_std": list(config.image_std),
        "vocab_size": text.vocab_size,
        "d_model": text.d_model,
        "decoder_layers": text.decoder_layers,
        "decoder_attention_heads": text.decoder_attention_heads,
        "head_dim": text.d_model // text.decoder_attention_heads,
        "max_prompt_length": processor.max_prompt_length,
        "bos_token_id": generation.bos_token_id,
        "pad_token_id": generation.pad_token_id,
        "eos_token_id": eos if isinstance(eos, list) else [eos],
        "decoder_start_token_id": generation.decoder_start_token_id,
        "generation": {key: _setting(generation, key) for key in _SEARCH_SETTINGS},
        "graphs": {name: f"{name}.onnx" for name in GRAPHS},
    }


@torch.no_grad()
def export_model(
    model: Florence2, processor: Florence2Processor, output: str | os.PathLike, opset: int = OPSET
) -> Path:
    """Write the graphs, tokenizer files and `onnx_config.json` of `model` into the folder `output`. The graphs are
    float32, traced on the CPU: `model` is moved there, in eval mode.

    The TorchScript exporter traces transformers' BART with its cache objects as plain Python: the graphs only see
    the flat tensors in and out, and sizes read off tensors stay symbolic. The dynamo exporter would also need
    `onnxscript`, took 28 s instead of about 1 s for the tiny image encoder, and wants the variable-length cache
    signature spelled out for torch.export. The first step has a graph of its own rather than an empty past, so
    that no graph ever sees a zero-length tensor and later steps never project the encoder states again.
    """
    require("onnx")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    settings = {**onnx_config(model, processor), "opset": opset}
    model = model.float().eval().cpu()
    text = model.config.text
    layers, heads, head_dim = text.decoder_layers, text.decoder_attention_heads, settings["head_dim"]
    side = model.config.image_size
    # Example inputs of sizes above 1 along every dynamic axis, with padding in the masks, so that no branch on
    # a size or on "mask is all ones" is baked into the trace.
    batch, prompt, past = 2, 5, 3
    pixels = torch.randn(batch, 3, side, side)
    features = model._encode_image(pixels)
    ids = torch.arange(4, 4 + prompt).repeat(batch, 1)
    mask = torch.ones(batch, prompt, dtype=torch.long)
    mask[1, -2:] = 0
    hidden, merged = _Encoder(model)(features, ids, mask)
    encoder_length = hidden.shape[1]
    step = torch.full((batch, 1), text.decoder_start_token_id, dtype=torch.long)
    kv = (batch, heads, past, head_dim)
    states = []
    for _ in range(layers):
        states += [torch.randn(kv), torch.randn(kv)]
        states += [torch.randn(batch, heads, encoder_length, head_dim) for _ in range(2)]

    axes_batch = {0: "batch"}
    cache_axes = {0: "batch", 2: "past_length"}
    cross_axes = {0: "batch", 2: "encoder_length"}
    first_states = _interleaved(layers, "present")
    with_past = _interleaved(layers, "past")
    present = state_names("present", layers)
    jobs = {
        "image_encoder": (
            _ImageEncoder(model), (pixels,), ["pixel_values"], ["image_features"],
            {"pixel_values": {0: "batch", 2: "height", 3: "width"},
             "image_features": {0: "batch", 1: "image_tokens"}},
        ),
        "encoder": (
            _Encoder(model), (features, ids, mask), ["image_features", "input_ids", "attention_mask"],
            ["encoder_hidden_states", "encoder_attention_mask"],
            {"image_features": {0: "batch", 1: "image_tokens"}, "input_ids": {0: "batch", 1: "prompt_length"},
             "attention_mask": {0: "batch", 1: "prompt_length"},
             "encoder_hidden_states": {0: "batch", 1: "encoder_length"},
             "encoder_attention_mask": {0: "batch", 1: "encoder_length"}},
        ),
        "decoder_first": (
            _DecoderFirst(model), (step, hidden, merged),
            ["decoder_input_ids", "encoder_hidden_states", "encoder_attention_mask"], ["logits", *first_states],
            {"decoder_input_ids": {0: "batch", 1: "decoder_length"},
             "encoder_hidden_states": {0: "batch", 1: "encoder_length"},
             "encoder_attention_mask": {0: "batch", 1: "encoder_length"}, "logits": axes_batch,
             **{n: {0: "batch", 2: "decoder_length" if n.startswith("present") else "encoder_length"}
                for n in first_states}},
        ),
        "decoder": (
            _Decoder(model), (step, merged, *states),
            ["decoder_input_ids", "encoder_attention_mask", *with_past], ["logits", *present],
            {"decoder_input_ids": axes_batch, "encoder_attention_mask": {0: "batch", 1: "encoder_length"},
             "logits": axes_batch,
             **{n: cache_axes if n.startswith("past") else cross_axes for n in with_past},
             **{n: {0: "batch", 2: "present_length"} for n in present}},
        ),
    }  # fmt: skip
    for name, (module, args, inputs, outputs, axes) in jobs.items():
        with warnings.catch_warnings():
            # The tracer warns about every Python bool / int it meets in transformers' code; the parity tests
            # (tests/test_onnx.py) are what proves the traces general.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, args, str(output / f"{name}.onnx"), input_names=inputs, output_names=outputs,
                dynamic_axes=axes, opset_version=opset, dynamo=False, do_constant_folding=True,
            )  # fmt: skip
    processor.save_pretrained(output)
    (output / CONFIG_FILE).write_text(json.dumps(settings, indent=2) + "\n")
    return output


def export_onnx(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    tokenizer: str | os.PathLike | None = None,
    image_size: int | None = None,
    opset: int = OPSET,
) -> Path:
    """`export_model` of any checkpoint `f2lightning.inference.loading.load_model` reads."""
    require("onnx")
    from f2lightning.inference.loading import load_model

    model, processor = load_model(checkpoint, tokenizer, "cpu", image_size)
    return export_model(model, processor, output, opset)
