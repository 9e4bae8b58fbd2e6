"""LoRA adapters on `Florence2` through peft: target presets, adapter-only state, merging, QLoRA's 4-bit base, and
the adapter directory that `peft.PeftModel.from_pretrained` puts on transformers' Florence-2.

The adapters are injected with `peft.inject_adapter_in_model`, not `get_peft_model`: injection swaps the targeted
`nn.Linear`s for peft's LoRA layers in place and returns our own `Florence2`, so its `forward` / `generate` /
`config`, `Florence2LitModule` and the optimizer's parameter groups (which read names such as `vision_tower.*`) keep
working unchanged. `get_peft_model` would wrap it in a `PeftModel` whose names gain a `base_model.model.` prefix
and whose `forward` expects a transformers model's keyword arguments.

peft is the optional extra `f2lightning[lora]`: it is imported inside the functions that use it, so this module,
and the `model_problems` checks that read `LoraSettings`, import without it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from f2lightning.checks import is_count, is_positive, raise_problems
from f2lightning.model.checkpoints import CheckpointError, transformers_key

# Each preset adapts every `nn.Linear` below these module prefixes.
PRESETS: dict[str, tuple[str, ...]] = {
    # BART's encoder and decoder layers hold exactly its attention projections (q, k, v, out) and FFN (fc1, fc2).
    "language": ("language_model.model.encoder.layers.", "language_model.model.decoder.layers."),
    "all_linear": ("language_model.", "projector."),
    "all": ("language_model.", "projector.", "vision_tower."),
}
DEFAULT_PRESET = "language"
# The LM head is the shared token embedding (tied weights): merged, an adapter on it would change the input
# embedding too, and transformers' checkpoint does not store it apart. No preset includes it and none may.
TIED_MODULES = ("language_model.lm_head",)
QLORA_MESSAGE = "QLoRA needs a CUDA GPU and bitsandbytes: pip install bitsandbytes"
ADAPTER = "default"  # peft's adapter name; a Florence2 carries one adapter at a time


@dataclass(frozen=True)
class LoraSettings:
    """What `Florence2LitModule(lora={...})` takes.

    `target_modules`, when given, replaces the preset: peft's matching (a list of full module names or of their
    trailing parts, or one regular expression matched against full names); `preset` and `target_modules` are
    exclusive, and with neither the preset is `language`. `quantize_4bit`: QLoRA, a frozen NF4 base (CUDA +
    bitsandbytes).
    """

    rank: int = 16
    alpha: float = 32
    dropout: float = 0.05
    target_modules: Sequence[str] | str | None = None
    preset: str | None = None
    quantize_4bit: bool = False

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> LoraSettings:
        raise_problems(lora_problems(raw), "model.lora")
        return cls(**raw)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def target_names(self, model: nn.Module) -> list[str]:
        """The full names of the modules these settings adapt in `model`."""
        from peft import LoraConfig
        from peft.tuners.tuners_utils import check_target_module_exists

        if self.target_modules is None:
            prefixes = PRESETS[self.preset or DEFAULT_PRESET]
            return [
                name
                for name, module in model.named_modules()
                if isinstance(module, nn.Linear) and name.startswith(prefixes) and name not in TIED_MODULES
            ]
        # peft's own matching rule, so that `target_modules` means here what it means in any peft config.
        matcher = LoraConfig(target_modules=self.target_modules)
        names = [name for name, _ in model.named_modules() if check_target_module_exists(matcher, name)]
        tied = [name for name in names if name in TIED_MODULES]
        if tied:
            raise ValueError(
                f"model.lora.target_modules matches {tied}: it shares its weight with the token embedding, "
                "so an adapter on it cannot be merged into it alone"
            )
        if not names:
            raise ValueError(
                f"model.lora.target_modules {self.target_modules!r} matches no module of the model"
            )
        return names


def qlora_available() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None


def lora_problems(raw: Any) -> list[str]:
    """Every rule on `model.lora` (a mapping as a config gives it), each naming the option."""
    if not isinstance(raw, Mapping):
        return [f"model.lora must be a mapping of LoRA options, got {raw!r}"]
    fields = [f.name for f in dataclasses.fields(LoraSettings)]
    problems = []
    if importlib.util.find_spec("peft") is None:
        problems.append("model.lora needs peft: pip install 'f2lightning[lora]'")
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        problems.append(f"model.lora: unknown option(s) {unknown}; the options are {fields}")
    preset = raw.get("preset")
    if preset is not None and preset not in PRESETS:
        problems.append(f"model.lora.preset {preset!r} is not a preset; choose one of {sorted(PRESETS)}")
    targets = raw.get("target_modules")
    if targets is not None:
        if preset is not None:
            problems.append("model.lora: give preset or target_modules, not both")
        if not (
            (isinstance(targets, str) and targets)
            or (isinstance(targets, Sequence) and targets and all(isinstance(t, str) and t for t in targets))
        ):
            problems.append(
                f"model.lora.target_modules must be a non-empty list of module names or a regular expression, "
                f"got {targets!r}"
            )
    if not is_count(raw.get("rank", 1)):
        problems.append(f"model.lora.rank must be a whole number >= 1, got {raw.get('rank')!r}")
    if not is_positive(raw.get("alpha", 1.0)):
        problems.append(f"model.lora.alpha must be a positive number, got {raw.get('alpha')!r}")
    dropout = raw.get("dropout", 0.0)
    if not (isinstance(dropout, int | float) and not isinstance(dropout, bool) and 0 <= dropout < 1):
        problems.append(f"model.lora.dropout must be a number in [0, 1), got {dropout!r}")
    quantize = raw.get("quantize_4bit", False)
    if not isinstance(quantize, bool):
        problems.append(f"model.lora.quantize_4bit must be true or false, got {quantize!r}")
    elif quantize and not qlora_available():
        problems.append(
            f"model.lora.quantize_4bit: {QLORA_MESSAGE} (CUDA available: {torch.cuda.is_available()}, "
            f"bitsandbytes installed: {importlib.util.find_spec('bitsandbytes') is not None})"
        )
    return problems


def apply(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """Freeze `model` and inject LoRA adapters (peft's init: B = 0, so outputs are unchanged until trained);
    afterwards only the adapters' parameters have `requires_grad`. Returns `model`, changed in place."""
    from peft import LoraConfig, inject_adapter_in_model

    names = settings.target_names(model)
    if settings.quantize_4bit:
        _quantize_4bit(model)
    model.requires_grad_(False)
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=names,
        bias="none",
    )
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    return model


def _quantize_4bit(model: nn.Module) -> None:
    """QLoRA's base: every `nn.Linear` but the tied LM head becomes a bitsandbytes NF4 layer (double-quantized
    statistics, bf16 compute, the QLoRA paper's settings) on the current CUDA device."""
    import bitsandbytes as bnb
    from peft import prepare_model_for_kbit_training

    for name, module in list(model.named_modules()):
        if type(module) is not nn.Linear or name in TIED_MODULES:
            continue
        quantized = bnb.nn.Linear4bit(
            module.in_features,
            module.out_features,
            bias=module.bias is not None,
            compute_dtype=torch.bfloat16,
            compress_statistics=True,
            quant_type="nf4",
        )
        quantized.load_state_dict(module.state_dict())
        model.set_submodule(name, quantized)
    model.cuda()  # bitsandbytes quantizes a `Params4bit` when it moves to a CUDA device
    # peft reads this flag to build its 4-bit LoRA layers, and `prepare_model_for_kbit_training` to treat the
    # model as quantized. That function's own gradient checkpointing calls methods only transformers models have;
    # `Florence2LitModule(activation_checkpointing=True)` does that job here.
    model.is_loaded_in_4bit = True
    prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def adapter_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The LoRA layers of `model`, by full name."""
    from peft.tuners.lora import LoraLayer

    return {name: module for name, module in model.named_modules() if isinstance(module, LoraLayer)}


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter weights, in peft's layout (`<module>.lora_A.weight`, no adapter name)."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model, adapter_name=ADAPTER)


def load_adapter_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load `adapter_state_dict`'s weights into a model with the same adapters, failing on any missing or
    unexpected key (peft's own loader only reports them)."""
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, dict(state), adapter_name=ADAPTER)
    missing = sorted(set(adapter_state_dict(model)) - set(state))
    if missing or result.unexpected_keys:
        raise CheckpointError(
            "adapter weights do not fit the model's LoRA layers (check model.lora's preset / target_modules / "
            f"rank):\n  missing: {missing[:20]}\n  unexpected: {sorted(result.unexpected_keys)[:20]}"
        )


def merge(model: nn.Module) -> nn.Module:
    """Fold every adapter into its layer's weight and put the plain layer back in its place: what peft's
    `merge_and_unload` does for a `PeftModel`, for adapters injected without one. Returns `model`, changed in
    place; the result is a plain `Florence2`."""
    for name, module in adapter_modules(model).items():
        module.merge(adapter_names=[ADAPTER])
        model.set_submodule(name, module.get_base_layer())
    del model.peft_config
    return model


def save_peft_adapter(model: nn.Module, path: str | Path, base_model_name_or_path: str | None = None) -> Path:
    """Write the adapter as peft saves one for transformers' `Florence2ForConditionalGeneration`
    (`adapter_config.json` + `adapter_model.safetensors`), so that `peft.PeftModel.from_pretrained(
    Florence2ForConditionalGeneration.from_pretrained(<the exported base>), path)` runs it. Module and key names
    go through `checkpoints.transformers_key`, the mapping `Florence2.save_pretrained` uses for the base."""
    path = Path(path)
    weights = {}
    for key, value in adapter_state_dict(model).items():
        native = transformers_key(key)
        if native is None:
            raise ValueError(f"adapter weight {key} has no place in transformers' Florence-2 layout")
        # `PeftModel` holds the transformers model as `base_model.model`; its saved keys carry that prefix.
        weights[f"base_model.model.{native}"] = value.detach().cpu().contiguous()
    targets = sorted(
        transformers_key(f"{name}.weight").removesuffix(".weight") for name in adapter_modules(model)
    )
    config = dataclasses.replace(
        model.peft_config[ADAPTER], target_modules=targets, base_model_name_or_path=base_model_name_or_path
    )
    path.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(path)
    save_file(weights, path / "adapter_model.safetensors", metadata={"format": "pt"})
    return path
