"""`Florence2LitModule`: the unified seq2seq objective over mixed tasks (paper §3.4, §6.1).

The model is built in `configure_model` (so FSDP / DeepSpeed can shard it at creation) once the tokenizer is
known: the datamodule's (`data.tokenizer`, the one tokenizer setting of a run), else the `pretrained`
checkpoint's, else the one a resumed checkpoint recorded. Frozen parts use `requires_grad_(False)`, stay in eval
mode through `.train()`, and are left out of the optimizer.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR
from transformers.models.bart.modeling_bart import shift_tokens_right

from f2lightning.checks import is_count, is_path, is_positive, raise_problems
from f2lightning.data.skips import SkipReport
from f2lightning.inference.generation import generate_batch, generation_kwargs
from f2lightning.inference.predict import prediction_line
from f2lightning.inference.results import scored_result
from f2lightning.model import Florence2, Florence2Config
from f2lightning.model import lora as lora_adapters
from f2lightning.model.checkpoints import (
    CheckpointError,
    extend_positions,
    init_language_model,
    init_vision_tower,
    read_tokenizer,
)
from f2lightning.processor import Florence2Processor
from f2lightning.tasks import get_task
from f2lightning.training.optim import build_optimizer, hold, warmup_cosine
from f2lightning.training.quality import TaskQuality

log = logging.getLogger(__name__)


# What a batch reports about its samples (`Collator`): images skipped or used changed, targets shortened.
SAMPLE_EVENTS = ("skipped", "rewritten", "truncated")


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps with a NaN / Inf loss or gradient."""


def model_config(hp: Mapping[str, Any]) -> Florence2Config | None:
    """The architecture the module will build, when it can be known without loading weights."""
    config = _initial_config(hp)
    extend = hp.get("extend_positions")
    if config is not None and is_count(extend) and extend > config.text.max_position_embeddings:
        config = config.replace(text={"max_position_embeddings": extend})
    return config


def _initial_config(hp: Mapping[str, Any]) -> Florence2Config | None:
    """The architecture of the weights the module starts from, before `extend_positions`."""
    pretrained = hp.get("pretrained")
    try:
        if pretrained:
            if not is_path(Path(str(pretrained)) / "config.json", Path.is_file):
                return None  # a .ckpt or a bare weights file: its config is only known once it is read
            config = Florence2Config.from_hf_config(Path(str(pretrained)) / "config.json")
        else:
            config = Florence2Config.preset(
                hp.get("preset", "tiny"), **dict(hp.get("config_overrides") or {})
            )
        image_size = hp.get("image_size")
        return config.replace(image_size=image_size) if image_size else config
    except (KeyError, TypeError, ValueError):
        return None  # reported by model_problems


def model_problems(hp: Mapping[str, Any], files: bool = True) -> list[str]:
    """Every rule on the module's own settings (`Florence2LitModule`'s arguments, raw as a config gives them);
    `files`: also that `pretrained` is on disk (a fit needs it, building the module does not)."""
    problems = []
    pretrained = hp.get("pretrained")
    if files and pretrained and not is_path(pretrained, Path.exists):
        problems.append(f"model.pretrained {pretrained} does not exist")
    if not pretrained:
        try:
            Florence2Config.preset(hp.get("preset", "tiny"), **dict(hp.get("config_overrides") or {}))
        except (KeyError, TypeError, ValueError) as error:
            problems.append(f"model.preset / config_overrides: {error}")
    if not is_positive(hp.get("lr", 1.0)):
        problems.append(f"model.lr must be a positive number, got {hp.get('lr')}")
    if not is_positive(hp.get("vision_lr_scale", 1.0)):
        problems.append(
            f"model.vision_lr_scale must be a positive number, got {hp.get('vision_lr_scale')} "
            "(use model.freeze_vision to keep the image encoder fixed)"
        )
    hold_steps = hp.get("hold_encoders_steps", 0)
    if not (hold_steps == 0 or is_count(hold_steps)):
        problems.append(f"model.hold_encoders_steps must be a whole number >= 0, got {hold_steps!r}")
    if not is_count(hp.get("max_nonfinite_steps", 1)):
        problems.append(f"model.max_nonfinite_steps must be >= 1, got {hp.get('max_nonfinite_steps')}")
    if hp.get("lora") is not None:
        problems += lora_adapters.lora_problems(hp["lora"])
        if not pretrained:
            problems.append(
                "model.lora needs model.pretrained: a LoRA run's checkpoints hold only the adapter, and resuming "
                "or exporting reads the frozen base again from there"
            )
        frozen = [
            name for name in ("freeze_vision", "freeze_vision_stages", "freeze_language") if hp.get(name)
        ]
        if frozen:
            problems.append(
                f"model.lora freezes the whole base: drop model.{', model.'.join(frozen)} and choose the adapted "
                "layers with model.lora.preset / target_modules"
            )
    extend = hp.get("extend_positions")
    if extend is not None:
        if not is_count(extend):
            problems.append(f"model.extend_positions must be a whole number >= 1, got {extend!r}")
        if not (pretrained or hp.get("language_init")):
            # Copies of a random table would make the new positions start indistinguishable from the old ones.
            problems.append(
                "model.extend_positions copies trained positions and needs model.pretrained or "
                "model.language_init; from scratch, size the table with model.config_overrides "
                "{text: {max_position_embeddings: N}}"
            )
        # (Both at once is refused by the LoRA rule above.)
        frozen = (
            "lora" if hp.get("lora") is not None else "freeze_language" if hp.get("freeze_language") else None
        )
        if frozen:
            problems.append(
                f"model.extend_positions with model.{frozen}: the new positions would stay untrained copies of the "
                "old ones; train the language model's weights"
            )
    config = _initial_config(hp)
    if config is not None and is_count(extend) and extend < config.text.max_position_embeddings:
        problems.append(
            f"model.extend_positions={extend} is below the {config.text.max_position_embeddings} positions the "
            "model already has; drop the option"
        )
    stages = hp.get("freeze_vision_stages", 0)
    if config is not None and not (
        stages == 0 or (is_count(stages) and stages <= len(config.vision.embed_dims))
    ):
        problems.append(
            f"model.freeze_vision_stages={stages} is out of range: the vision tower has stages 1..{len(config.vision.embed_dims)}"
        )
    return problems


class Florence2LitModule(L.LightningModule):
    def __init__(
        self,
        preset: str = "tiny",
        config_overrides: dict[str, Any] | None = None,
        pretrained: str | None = None,
        vision_init: str | None = None,
        language_init: str | None = None,
        image_size: int | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        vision_lr_scale: float = 1.0,
        hold_encoders_steps: int = 0,
        warmup_steps: int = 5000,
        min_lr_ratio: float = 0.0,
        freeze_vision: bool = False,
        freeze_vision_stages: int = 0,
        freeze_language: bool = False,
        num_beams: int = 3,
        val_max_new_tokens: int | None = None,
        log_predictions: int = 4,
        activation_checkpointing: bool = False,
        compile: bool = False,
        max_nonfinite_steps: int = 10,
        lora: dict[str, Any] | None = None,
        extend_positions: int | None = None,
    ) -> None:
        """
        Args:
            preset: `tiny`, `base` or `large` (Table 15) when not starting from `pretrained` weights.
            config_overrides: fields of `Florence2Config` to change, e.g. `{"vision": {"drop_path_rate": 0.2}}`.
            pretrained: a Florence-2 checkpoint directory / file in any supported format.
            vision_init: DaViT weights to start the image encoder from (paper §6.1: UniCL); any format that
                `f2lightning.model.checkpoints.vision_tower_state_dict` reads (timm, Florence-2, ours).
            language_init: a BART checkpoint directory (e.g. a local copy of `facebook/bart-base`) to start the
                multi-modal encoder-decoder from (paper §6.1); its vocabulary is resized to the tokenizer's.
            image_size: input resolution (384 pre-training, 768 high-resolution tuning); linked to the data's.
            vision_lr_scale: the image encoder's learning rate is `lr * vision_lr_scale`. Below 1 (e.g. 0.1) it keeps
                a DaViT trained from scratch from collapsing to image-independent features in its first steps
                (docs/training.md "Training from scratch").
            hold_encoders_steps: the image encoder, projector and multi-modal encoder keep their weights (learning
                rate 0) for the first N optimizer steps while the decoder learns to read them; from scratch a
                trainable BART encoder otherwise washes the image information out of its output within ~50 steps
                (docs/training.md "Training from scratch"). Their Adam moments still accumulate meanwhile.
            freeze_vision / freeze_vision_stages / freeze_language: Table 12 and Table 8 style freezing.
            activation_checkpointing: recompute DaViT stages and BART layers in the backward pass instead of keeping
                their activations (less memory, about a third more compute).
            compile: `torch.compile` the teacher-forced loss (training and validation loss). Validation's generation
                stays eager: step-by-step decoding with a growing cache would recompile at every length.
            max_nonfinite_steps: stop with an error after this many consecutive skipped non-finite steps.
            lora: fine-tune LoRA adapters (peft) on the frozen `pretrained` model, e.g. `{"preset": "language",
                "rank": 8}`; the options are `f2lightning.model.lora.LoraSettings`'s (docs/training.md "LoRA").
                Only the adapters train and are checkpointed; `export` merges them into a plain model,
                `export_adapter` writes them as a peft adapter.
            extend_positions: grow the learned text positions (BART's `max_position_embeddings`: the decoder's table
                and, sharing the setting, the encoder's) to this many once `pretrained` / `language_init` is loaded,
                for `data.max_target_length` beyond the released 1024. Trained rows are kept bit-identical, new
                positions start as copies of them (docs/training.md "Targets longer than 1024 tokens").
        """
        super().__init__()
        self.save_hyperparameters()
        raise_problems(model_problems(self.hparams, files=False), "model configuration")
        self.lora_settings = lora_adapters.LoraSettings.from_dict(lora) if lora is not None else None
        if self.lora_settings is not None:
            # Checkpoints hold no base weights, so Lightning must not ask for them; `on_load_checkpoint` loads
            # the adapter itself and fails on any adapter key missing or unexpected.
            self.strict_loading = False
        self.model: Florence2 | None = None
        self.processor: Florence2Processor | None = None
        # Per evaluation stage ("val", "test"): quality metrics over that stage's tasks.
        self.quality = torch.nn.ModuleDict()
        # Per stage ("train" / "val" / "test") and SAMPLE_EVENTS kind: the {"reason", "message"} of each sample.
        self._sample_events: dict[str, dict[str, list[dict[str, str]]]] = {}
        self._nonfinite_in_a_row = 0
        self.nonfinite_steps = 0
        self._drawn_tasks: set[str] = set()
        self._compiled_token_loss = None

    # ------------------------------------------------------------------ building
    def _datamodule(self):
        return getattr(self.trainer, "datamodule", None) if self._trainer is not None else None

    def _tokenizer(self):
        return getattr(self._datamodule(), "tokenizer", None)

    def configure_model(self) -> None:
        if self.model is not None:
            return
        if self._trainer is None and not self.hparams.pretrained:
            # `load_from_checkpoint` calls this before `on_load_checkpoint`, which builds from the checkpoint's
            # own config and tokenizer; without a trainer there is no datamodule to take a tokenizer from.
            return
        self._build(self._tokenizer())

    def _build(self, tokenizer, config: Florence2Config | None = None) -> None:
        hp = self.hparams
        model, tokenizer = self._base_model(tokenizer, config)
        model.freeze(
            vision=hp.freeze_vision, vision_stages=hp.freeze_vision_stages, language=hp.freeze_language
        )
        if self.lora_settings is not None:
            lora_adapters.apply(model, self.lora_settings)
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            total = sum(p.numel() for p in model.parameters())
            layers = len(lora_adapters.adapter_modules(model))
            log.info("LoRA on %d layers: %d of %d parameters train", layers, trainable, total)
        if hp.activation_checkpointing:
            model.vision_tower.set_grad_checkpointing(True)
            model.language_model.activation_checkpointing_enable()
        self.model = model
        self.processor = Florence2Processor.for_model(model.config, tokenizer)
        if hp.compile:
            # A compiled function, not a compiled module: the state-dict keys stay those of the eager model.
            self._compiled_token_loss = torch.compile(self._token_loss)

    def _base_model(self, tokenizer, config: Florence2Config | None = None) -> tuple[Florence2, Any]:
        """The model before freezing and adapters (from `pretrained`, or `config` / the preset), and its tokenizer."""
        hp = self.hparams
        if config is None and hp.pretrained:
            model = Florence2.from_pretrained(hp.pretrained)
            tokenizer = tokenizer or read_tokenizer(Path(hp.pretrained))
        else:
            if config is None:
                config = Florence2Config.preset(hp.preset, **(hp.config_overrides or {}))
                if tokenizer is None:
                    raise ValueError(
                        "no tokenizer: give a datamodule with one (`data.tokenizer`) or `pretrained` weights"
                    )
                # Padding the vocabulary to a multiple of 64 keeps the LM head's matmul on fast tensor-core shapes.
                config = config.replace(
                    text={"vocab_size": -(-len(tokenizer) // 64) * 64},
                    image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                )
            if hp.image_size:
                config = config.replace(image_size=hp.image_size)
            model = Florence2(config)
        if tokenizer is None:
            raise ValueError(f"{hp.pretrained}: the checkpoint has no tokenizer files; set `data.tokenizer`")
        if hp.vision_init:
            init_vision_tower(model, hp.vision_init)
        if hp.language_init:
            init_language_model(model, hp.language_init)
        if hp.extend_positions:
            # A resumed run's config already has the grown size: then this leaves the model as it is.
            extend_positions(model, hp.extend_positions)
        if len(tokenizer) > model.config.text.vocab_size:
            if self.lora_settings is not None:
                # New embedding rows would be random, frozen and left out of the adapter-only checkpoints.
                raise ValueError(
                    f"the tokenizer has {len(tokenizer)} tokens, more than {hp.pretrained}'s vocabulary of "
                    f"{model.config.text.vocab_size}: with model.lora the base stays frozen and cannot grow; use "
                    "the tokenizer saved with the base"
                )
            model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)
        if hp.image_size:
            model.config.image_size = hp.image_size
        return model, tokenizer

    def setup(self, stage: str) -> None:
        # Read on every rank: `trainer.log_dir` is a collective call under DDP, so rank 0 alone must not ask later.
        self._run_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        datamodule = getattr(self.trainer, "datamodule", None)
        for name, dataset in (("val", "val_dataset"), ("test", "test_dataset")):
            dataset = getattr(datamodule, dataset, None)
            if dataset is not None and name not in self.quality:
                self.quality[name] = TaskQuality(list(dataset.task_sizes))

    def train(self, mode: bool = True) -> Florence2LitModule:
        super().train(mode)
        if self.model is not None and mode:
            # Frozen weights must not see dropout / drop-path / batch statistics change either.
            hp = self.hparams
            for module in self.model.frozen_modules(
                hp.freeze_vision, hp.freeze_vision_stages, False, hp.freeze_language
            ):
                module.eval()
        return self

    # ------------------------------------------------------------------ steps
    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token-mean cross-entropy (paper eq. 1) and the per-token losses it averages.

        One cross-entropy serves both the loss and the per-task figures (BART's own `labels=` path would
        compute a second one over the full logits).
        """
        token_loss = self._compiled_token_loss or self._token_loss
        return token_loss(
            batch["pixel_values"],
            batch["input_ids"],
            batch["attention_mask"],
            batch["labels"],
            batch.get("image_index"),
        )

    def _token_loss(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        image_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        text = self.model.config.text
        decoder_input_ids = shift_tokens_right(labels, text.pad_token_id, text.decoder_start_token_id)
        logits = self.model(
            pixel_values,
            input_ids,
            attention_mask,
            decoder_input_ids=decoder_input_ids,
            image_index=image_index,
        ).logits
        token_loss = F.cross_entropy(
            logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none"
        )
        return token_loss.sum() / (labels != -100).sum().clamp(min=1), token_loss

    def _note_sample_events(self, stage: str, batch: dict[str, Any]) -> None:
        events = self._sample_events.setdefault(stage, {kind: [] for kind in SAMPLE_EVENTS})
        for kind in SAMPLE_EVENTS:
            events[kind] += batch.get(kind, [])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        self._note_sample_events("train", batch)
        if not batch["size"]:
            return None
        loss, token_loss = self(batch)
        if not self._all_ranks_finite(loss):
            self._skip_nonfinite("loss")
            return None
        self._nonfinite_in_a_row = 0
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["size"])
        for task, value in self._loss_per_task(token_loss.detach(), batch).items():
            self.log(f"train/loss/{task}", value, batch_size=batch["size"])
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        # One fused norm over all gradients is non-finite iff some gradient is (or is so large that its square
        # overflows); a per-tensor isfinite().all() costs two kernels per parameter.
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=self.device)
        # Ranks decide together: under FSDP each holds a different shard of the gradients, and one rank
        # skipping alone would leave the model half updated (or stop that rank only).
        if not self._all_ranks_finite(norm):
            # A parameter whose grad is None is skipped entirely by AdamW: no moment update, no weight decay.
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None
            self._skip_nonfinite("gradient")

    def _all_ranks_finite(self, value: torch.Tensor) -> bool:
        finite = torch.isfinite(value.detach()).float()
        if self.trainer.world_size > 1:
            finite = self.all_gather(finite).min()
        return bool(finite)

    def _skip_nonfinite(self, what: str) -> None:
        self.nonfinite_steps += 1
        self._nonfinite_in_a_row += 1
        log.warning(
            "step %d: non-finite %s, step skipped (%d in a row)",
            self.global_step,
            what,
            self._nonfinite_in_a_row,
        )
        if self._nonfinite_in_a_row >= self.hparams.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"{self._nonfinite_in_a_row} consecutive steps had a non-finite {what}; stopping. Lower the learning "
                "rate, check the data, or use bf16 instead of fp16."
            )

    @staticmethod
    def _loss_per_task(token_loss: torch.Tensor, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        labels = batch["labels"]
        per_sample = token_loss.sum(1) / (labels != -100).sum(1).clamp(min=1)
        by_task: dict[str, list[torch.Tensor]] = {}
        for task, value in zip(batch["task"], per_sample, strict=True):
            by_task.setdefault(task.strip("<>"), []).append(value)
        return {task: torch.stack(values).mean() for task, values in by_task.items()}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluation_step("val", batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluation_step("test", batch)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Answer one batch of the datamodule's predict requests as `f2lightning predict` does: JSON lines with
        the scored result and its record (`training.prediction.PredictionWriter` writes them), plus the images
        that could not be decoded and what the records could not hold, for the writer to count."""
        dropped = SkipReport()
        lines = []
        if batch["indices"]:
            task = batch["task"]
            kwargs = generation_kwargs(
                self.processor,
                task,
                self.hparams.num_beams,
                self.hparams.val_max_new_tokens,
                with_logprobs=True,
            )
            source = Path(self.trainer.ckpt_path).stem if self.trainer.ckpt_path else "florence2"
            for request, generation in zip(
                batch["samples"], generate_batch(self.model, self.processor, batch, kwargs), strict=True
            ):
                scored = scored_result(task, generation, request.image_size, self.processor)
                lines.append(prediction_line(request, generation.text, scored, source, dropped))
        return {"lines": lines, "skipped": batch["skipped"], "dropped": dropped}

    def on_validation_epoch_start(self) -> None:
        self._drawn_tasks = set()

    def on_test_epoch_start(self) -> None:
        self._drawn_tasks = set()

    def on_validation_epoch_end(self) -> None:
        self._evaluation_epoch_end("val", f"validation at step {self.global_step}")

    def on_test_epoch_end(self) -> None:
        self._evaluation_epoch_end("test", f"test at step {self.global_step}")

    def _evaluation_step(self, stage: str, batch: dict[str, Any]) -> None:
        """Teacher-forced loss, then generation scored per task (`TaskQuality`), under `<stage>/...`."""
        self._note_sample_events(stage, batch)
        if not batch["size"]:
            return
        self.log(f"{stage}/loss", self(batch)[0], sync_dist=True, batch_size=batch["size"])
        task = batch["task"][0]
        kwargs = generation_kwargs(
            self.processor, task, self.hparams.num_beams, self.hparams.val_max_new_tokens
        )
        spec, sizes = get_task(task), batch["image_size"]
        generations = generate_batch(self.model, self.processor, batch, kwargs)
        preds = [spec.parse(g.text, size) for g, size in zip(generations, sizes, strict=True)]
        targets = [spec.parse(target, size) for target, size in zip(batch["target"], sizes, strict=True)]
        self.quality[stage].update(task, preds, targets, sizes)
        if task not in self._drawn_tasks and self.global_rank == 0 and self.hparams.log_predictions:
            self._drawn_tasks.add(task)
            self._draw(stage, task, batch, preds)

    def _evaluation_epoch_end(self, stage: str, when: str) -> None:
        self._report_sample_events(stage, when, f"{stage}_step{self.global_step:06d}")
        if stage not in self.quality:
            return
        for name, value in self.quality[stage].compute().items():
            self.log(f"{stage}/{name}", value, sync_dist=False)  # torchmetrics already synced across ranks
        # Fresh states must be ordinary tensors: made under inference mode they could not be updated by a
        # later loop that runs without it (validate before fit, then fit's own validation).
        with torch.inference_mode(False):
            self.quality[stage].reset()

    def _draw(self, stage: str, task: str, batch: dict[str, Any], preds: list[Any]) -> None:
        from f2lightning.images import load_image
        from f2lightning.visualize import draw_prediction

        dataset = getattr(self.trainer.datamodule, f"{stage}_dataset")
        folder = f"step{self.global_step:06d}" if stage == "val" else f"{stage}_step{self.global_step:06d}"
        out_dir = self._run_dir / "predictions" / folder
        out_dir.mkdir(parents=True, exist_ok=True)
        for i, (index, pred) in enumerate(
            list(zip(batch["index"], preds, strict=True))[: self.hparams.log_predictions]
        ):
            image = load_image(dataset.flat[index].image_path)
            draw_prediction(image, task, pred).save(out_dir / f"{task.strip('<>').lower()}_{i}.png")

    # ------------------------------------------------------------------ epoch bookkeeping
    def on_train_epoch_end(self) -> None:
        self._report_sample_events("train", f"epoch {self.current_epoch}", f"epoch{self.current_epoch}")

    def _report_sample_events(self, stage: str, when: str, suffix: str) -> None:
        """Log how many samples of `stage` lost or changed their image (`skipped_images_<suffix>.json`) or had
        their target shortened (`truncated_targets_<suffix>.json`), and write them by reason to those files in
        the run's log folder (every rank's, gathered on rank 0)."""
        events = self._sample_events.pop(stage, {kind: [] for kind in SAMPLE_EVENTS})
        if self.trainer.world_size > 1:
            gathered: list[dict[str, list]] = [{} for _ in range(self.trainer.world_size)]
            torch.distributed.all_gather_object(gathered, events)
            events = {kind: [e for rank in gathered for e in rank[kind]] for kind in SAMPLE_EVENTS}
        self.log(f"{stage}/skipped_images", float(len(events["skipped"])), rank_zero_only=True)
        for kind, metric in (("rewritten", "rewritten_images"), ("truncated", "truncated_targets")):
            if events[kind]:
                self.log(f"{stage}/{metric}", float(len(events[kind])), rank_zero_only=True)
        if self.global_rank != 0:
            return
        reports = {kind: SkipReport(max_examples=100) for kind in SAMPLE_EVENTS}
        for kind, kind_events in events.items():
            for event in kind_events:
                reports[kind].drop(event["reason"], example=event["message"])
        for name, kinds in (
            ("skipped_images", ("skipped", "rewritten")),
            ("truncated_targets", ("truncated",)),
        ):
            if not any(reports[kind].total for kind in kinds):
                continue
            path = self._run_dir / f"{name}_{suffix}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            report = {"stage": stage, "epoch": self.current_epoch, "step": self.global_step}
            path.write_text(json.dumps(report | {kind: reports[kind].to_json() for kind in kinds}, indent=2))
            log.warning("%s: %s; report in %s", when,
                        "; ".join(f"{kind}: {reports[kind]}" for kind in kinds), path)  # fmt: skip

    # ------------------------------------------------------------------ optimization
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = build_optimizer(self.model, hp.lr, hp.weight_decay, tuple(hp.betas), hp.vision_lr_scale)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        if hp.hold_encoders_steps >= total:
            raise ValueError(
                f"model.hold_encoders_steps={hp.hold_encoders_steps} is not below the run's {total} optimizer steps: "
                "the encoders would never train"
            )
        multiplier = warmup_cosine(min(hp.warmup_steps, total), total, hp.min_lr_ratio)
        held = hold(multiplier, hp.hold_encoders_steps)
        schedule = LambdaLR(
            optimizer, [held if group["encoder"] else multiplier for group in optimizer.param_groups]
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["f2lightning"] = {
            "model_config": self.model.config.to_dict(),
            "tokenizer_dir": getattr(self._datamodule(), "tokenizer_path", None),
        }
        if checkpoint["f2lightning"]["tokenizer_dir"] is not None:
            checkpoint["f2lightning"]["tokenizer_dir"] = str(checkpoint["f2lightning"]["tokenizer_dir"])
        if self.lora_settings is not None:
            # The frozen base is read again from `pretrained` on resume, so the file keeps only the adapter (and
            # the optimizer state, which is the adapter's alone).
            checkpoint["state_dict"] = _without_model(checkpoint["state_dict"]) | {
                f"model.{key}": value for key, value in lora_adapters.adapter_state_dict(self.model).items()
            }
            checkpoint["f2lightning"]["lora"] = {
                "base": str(self.hparams.pretrained),
                **self.lora_settings.to_dict(),
            }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        info = checkpoint.get("f2lightning", {})
        if "lora" in info and self.lora_settings is None:
            raise CheckpointError(
                f"this checkpoint holds only LoRA adapter weights on the base {info['lora']['base']}: set "
                "model.pretrained to that base and model.lora as in the run that wrote it"
            )
        if self.model is None:
            from f2lightning.tokenizer import load_tokenizer

            tokenizer = self._tokenizer()
            if tokenizer is None and info.get("tokenizer_dir"):
                tokenizer = load_tokenizer(info["tokenizer_dir"])
            # With LoRA the base must be `pretrained` itself: the checkpoint does not hold it.
            config = (
                None if self.lora_settings is not None else Florence2Config.from_dict(info["model_config"])
            )
            self._build(tokenizer, config)
        if self.lora_settings is not None:
            state = checkpoint["state_dict"]
            adapter = {
                key.removeprefix("model."): value for key, value in state.items() if key.startswith("model.")
            }
            lora_adapters.load_adapter_state_dict(self.model, adapter)
            # What Lightning loads next is the rest; handing it the base to copy onto itself would also fail
            # for a 4-bit base, whose saved quantization statistics bitsandbytes does not load back.
            checkpoint["state_dict"] = _without_model(state)

    def export(self, path: str | Path) -> Path:
        """Write the trained model in the transformers-native layout (opens with plain `transformers`), with
        its tokenizer files. With `lora`: the adapter merged into a fresh full-precision copy of the
        `pretrained` base (not into the training copy, which may be 4-bit and keeps training)."""
        model = self.model
        if self.lora_settings is not None:
            model, _ = self._base_model(self.processor.tokenizer)
            lora_adapters.apply(model, dataclasses.replace(self.lora_settings, quantize_4bit=False))
            lora_adapters.load_adapter_state_dict(model, lora_adapters.adapter_state_dict(self.model))
            lora_adapters.merge(model)
        self.processor.save_pretrained(model.save_pretrained(path))
        return Path(path)

    def export_adapter(self, path: str | Path) -> Path:
        """Write the LoRA adapter as a peft adapter directory, with the tokenizer files, for
        `peft.PeftModel.from_pretrained(Florence2ForConditionalGeneration.from_pretrained(<base>), path)`, where
        `<base>` is `pretrained` in the transformers-native layout (`Florence2.from_pretrained(pretrained)
        .save_pretrained(...)` writes it from any layout)."""
        if self.lora_settings is None:
            raise ValueError("export_adapter needs a LoRA run (model.lora); export writes the whole model")
        lora_adapters.save_peft_adapter(
            self.model, path, base_model_name_or_path=str(self.hparams.pretrained)
        )
        self.processor.save_pretrained(path)
        return Path(path)


def _without_model(state: Mapping[str, Any]) -> dict[str, Any]:
    """A Lightning `state_dict` without the model's entries (what else the module holds, e.g. metric states)."""
    return {key: value for key, value in state.items() if not key.startswith("model.")}
