"""`OnnxFlorence2`: generation from `f2lightning export-onnx` graphs with onnxruntime, no torch model involved.

The search is numpy and follows transformers' `generate` as `f2lightning predict` calls it
(`Florence2Processor.generation_kwargs` of the task, the model's generation settings from `onnx_config.json`):

* greedy (`num_beams=1`): argmax of the processed logits, finished rows padded, stop at EOS or `max_length`;
* beam search: transformers' vectorised `_beam_search` step for step (the top `max(2, 1 + EOS ids) * num_beams`
  continuations of the accumulated log-probabilities, finished hypotheses scored with `length_penalty`, the same
  early-stop heuristic for `early_stopping` False / True / "never");
* logits processors in transformers' order: n-gram blocking (`no_repeat_ngram_size`, 3 for tasks that are not
  location-heavy), forced BOS at the first step, forced EOS at the last.

Each generated token's log-probability is its log-softmax under the processed distribution of its step, which is
what `generate(output_scores=True)` + `compute_transition_scores(normalize_logits=True)` give, so boxes are scored
by `f2lightning.inference.results.scored_result` exactly as `predict` scores them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from f2lightning.images import load_image
from f2lightning.inference.generation import Generation, generation_kwargs
from f2lightning.inference.onnx_export import CONFIG_FILE, require, state_names
from f2lightning.inference.results import ScoredResult, scored_result
from f2lightning.processor import Florence2Processor
from f2lightning.tasks import get_task
from f2lightning.tokenizer import load_tokenizer

# transformers' stand-in for "impossible" in beam bookkeeping (finite, unlike the processors' -inf).
_IMPOSSIBLE = np.float32(-1.0e9)


@dataclass(frozen=True)
class SearchSettings:
    """One call's search: `Florence2Processor.generation_kwargs` over the model's own generation settings."""

    num_beams: int
    max_new_tokens: int
    no_repeat_ngram_size: int
    forced_bos_token_id: int | None
    forced_eos_token_id: int | None
    early_stopping: bool | str
    length_penalty: float


class OnnxFlorence2:
    """An exported model (`f2lightning export-onnx`) that answers images with onnxruntime.

    `providers` are onnxruntime execution providers (default CPU); `threads` sets each session's intra-op
    threads (default: onnxruntime's, one per physical core). `image_size` overrides the checkpoint's input
    resolution, as `f2lightning predict --image-size` does: the image encoder's height and width are dynamic axes.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        image_size: int | None = None,
    ) -> None:
        ort = require("onnxruntime")
        self.path = Path(path)
        config_file = self.path / CONFIG_FILE
        if not config_file.is_file():
            raise FileNotFoundError(f"{config_file}: not an f2lightning export-onnx folder")
        self.config: dict[str, Any] = json.loads(config_file.read_text())
        config = self.config
        image_size = image_size or config["image_size"]
        # The checks PyTorch makes while it runs (position tables); onnxruntime would fail with an index error.
        if (
            image_size > config["max_image_size"]
            or (image_size // 32) ** 2 + 1 >= config["max_encoder_length"]
        ):
            raise ValueError(
                f"image_size {image_size} exceeds the model's position tables ({config['max_image_size']} px per "
                f"side, {config['max_encoder_length']} encoder positions)"
            )
        self.processor = Florence2Processor(
            load_tokenizer(self.path),
            image_size,
            config["image_mean"],
            config["image_std"],
            max_prompt_length=config["max_prompt_length"],
        )
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        providers = list(providers or ["CPUExecutionProvider"])
        self.sessions = {
            name: ort.InferenceSession(str(self.path / file), options, providers=providers)
            for name, file in config["graphs"].items()
        }
        layers = config["decoder_layers"]
        self._present = state_names("present", layers)
        self._past = state_names("past", layers)
        self._cross = state_names("cross", layers)
        self._eos = np.array(config["eos_token_id"], dtype=np.int64)

    # ------------------------------------------------------------------ graphs
    def encode_image(self, pixel_values: np.ndarray) -> np.ndarray:
        """`(B, 3, S, S)` float32 → `(B, N, d_model)` image tokens (`Florence2.encode_image`)."""
        return self.sessions["image_encoder"].run(None, {"pixel_values": pixel_values})[0]

    def encode(
        self, image_features: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """BART's encoder over `[image tokens, prompt]`: hidden states and the merged mask."""
        hidden, mask = self.sessions["encoder"].run(
            None, {"image_features": image_features, "input_ids": input_ids, "attention_mask": attention_mask}
        )
        return hidden, mask

    def decode_first(
        self, decoder_input_ids: np.ndarray, hidden: np.ndarray, mask: np.ndarray
    ) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
        """First decoder step: last-position logits, self-attention cache, cross-attention keys / values."""
        outputs = self.sessions["decoder_first"].run(
            None,
            {
                "decoder_input_ids": decoder_input_ids,
                "encoder_hidden_states": hidden,
                "encoder_attention_mask": mask,
            },
        )
        states = outputs[1:]  # per layer: own key, own value, cross key, cross value
        own = [s for i, s in enumerate(states) if i % 4 < 2]
        cross = [s for i, s in enumerate(states) if i % 4 >= 2]
        return outputs[0], own, cross

    def decode_step(
        self, tokens: np.ndarray, mask: np.ndarray, past: list[np.ndarray], cross: list[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """One more decoder position (`tokens`: `(B, 1)`) on top of `past`: logits and the grown cache."""
        feed = {"decoder_input_ids": tokens, "encoder_attention_mask": mask}
        feed.update(zip(self._past, past))
        feed.update(zip(self._cross, cross))
        outputs = self.sessions["decoder"].run(None, feed)
        return outputs[0], outputs[1:]

    # ------------------------------------------------------------------ generation
    def settings(self, task: str, num_beams: int, max_new_tokens: int | None = None) -> SearchSettings:
        """The search of `task`: the processor's per-task kwargs (what `predict` passes) over the model's defaults."""
        kwargs = generation_kwargs(self.processor, task, num_beams, max_new_tokens)
        model = self.config["generation"]
        return SearchSettings(
            num_beams=kwargs["num_beams"],
            max_new_tokens=kwargs["max_new_tokens"],
            no_repeat_ngram_size=kwargs.get("no_repeat_ngram_size", model["no_repeat_ngram_size"]),
            forced_bos_token_id=model["forced_bos_token_id"],
            forced_eos_token_id=model["forced_eos_token_id"],
            early_stopping=model["early_stopping"],
            length_penalty=model["length_penalty"],
        )

    def generations(
        self,
        images: Sequence[Image.Image | str | os.PathLike],
        task: str,
        text_input: str | None = None,
        region: Sequence[float] | None = None,
        num_beams: int = 3,
        max_new_tokens: int | None = None,
        batch_size: int = 8,
    ) -> list[Generation]:
        """Text, token ids (up to and including EOS, no padding) and token log-probabilities of every image."""
        spec, settings = get_task(task), self.settings(task, num_beams, max_new_tokens)
        out: list[Generation] = []
        for start in range(0, len(images), batch_size):
            batch = [_image(image) for image in images[start : start + batch_size]]
            prompts = [spec.build_prompt(text_input, region, image.size) for image in batch]
            pixels = np.stack([self.processor.preprocess_image(image).numpy() for image in batch])
            tokens = self.processor.tokenize_prompts(prompts)
            hidden, mask = self.encode(
                self.encode_image(pixels), tokens["input_ids"].numpy(), tokens["attention_mask"].numpy()
            )
            search = self._greedy if settings.num_beams == 1 else self._beam_search
            for ids, logprobs in search(hidden, mask, settings):
                text = self.processor.tokenizer.decode(
                    ids, skip_special_tokens=False, clean_up_tokenization_spaces=False
                )
                out.append(Generation(text, ids, logprobs))
        return out

    def generate(
        self,
        images: Sequence[Image.Image | str | os.PathLike],
        task: str,
        text_input: str | None = None,
        region: Sequence[float] | None = None,
        num_beams: int = 3,
        max_new_tokens: int | None = None,
        batch_size: int = 8,
    ) -> list[ScoredResult]:
        """Parsed results with per-box and sequence scores (what `f2lightning predict` writes as `result` / `score`),
        coordinates in each image's own pixels."""
        loaded = [_image(image) for image in images]
        generations = self.generations(
            loaded, task, text_input, region, num_beams, max_new_tokens, batch_size
        )
        return [
            scored_result(task, generation, image.size, self.processor)
            for generation, image in zip(generations, loaded, strict=True)
        ]

    # ------------------------------------------------------------------ search
    def _greedy(
        self, hidden: np.ndarray, mask: np.ndarray, settings: SearchSettings
    ) -> list[tuple[list[int], list[float]]]:
        rows = hidden.shape[0]
        start = self.config["decoder_start_token_id"]
        sequences = np.full((rows, 1), start, dtype=np.int64)
        logits, past, cross = self.decode_first(sequences, hidden, mask)
        logprobs = np.zeros((rows, settings.max_new_tokens), dtype=np.float32)
        lengths = np.full(rows, settings.max_new_tokens)
        unfinished = np.ones(rows, dtype=bool)
        for step in range(settings.max_new_tokens):
            scores = process_scores(sequences, logits, settings)  # a fresh array of onnxruntime's
            tokens = scores.argmax(axis=-1)
            logprobs[:, step] = np.take_along_axis(_log_softmax(scores), tokens[:, None], axis=1)[:, 0]
            tokens = np.where(unfinished, tokens, self.config["pad_token_id"])
            sequences = np.concatenate([sequences, tokens[:, None]], axis=1)
            ended = unfinished & np.isin(tokens, self._eos)
            lengths[ended] = step + 1
            unfinished &= ~ended
            if not unfinished.any() or step + 1 == settings.max_new_tokens:
                break
            logits, past = self.decode_step(tokens[:, None], mask, past, cross)
        return [
            (sequences[i, 1 : 1 + lengths[i]].tolist(), logprobs[i, : lengths[i]].tolist())
            for i in range(rows)
        ]

    def _beam_search(
        self, hidden: np.ndarray, mask: np.ndarray, settings: SearchSettings
    ) -> list[tuple[list[int], list[float]]]:
        batch, beams = hidden.shape[0], settings.num_beams
        max_length = 1 + settings.max_new_tokens  # the decoder start token + the new tokens
        keep = max(2, 1 + len(self._eos)) * beams
        first_k = np.arange(keep) < beams  # only the best `beams` continuations may finish a hypothesis
        start = np.full((batch, 1), self.config["decoder_start_token_id"], dtype=np.int64)
        # Every beam of a sample starts from the same state: one first step per sample, copied to its beams.
        logits, past, cross = self.decode_first(start, hidden, mask)
        logits = np.repeat(logits, beams, axis=0)
        past = [np.repeat(s, beams, axis=0) for s in past]
        cross = [np.repeat(s, beams, axis=0) for s in cross]
        mask = np.repeat(mask, beams, axis=0)

        fill = self.config["pad_token_id"]
        running = np.full((batch, beams, max_length), fill if fill is not None else -1, dtype=np.int64)
        running[:, :, 0] = start
        running_lp = np.zeros((batch, beams, settings.max_new_tokens), dtype=np.float32)
        running_scores = np.zeros((batch, beams), dtype=np.float32)
        running_scores[:, 1:] = _IMPOSSIBLE  # only the first beam's continuations count at the first step
        sequences, sequences_lp = running.copy(), running_lp.copy()
        beam_scores = np.full((batch, beams), _IMPOSSIBLE, dtype=np.float32)
        finished = np.zeros((batch, beams), dtype=bool)
        lengths = np.zeros((batch, beams), dtype=np.int64)  # generated tokens of each finished hypothesis
        improvable = np.ones((batch, 1), dtype=bool)
        rows = np.arange(batch)[:, None]
        cur_len = 1
        while True:
            flat = running[:, :, :cur_len].reshape(batch * beams, cur_len)
            log_probs = process_scores(flat, _log_softmax(logits), settings)
            token_lp = _log_softmax(log_probs).reshape(batch, beams, -1)
            vocab = log_probs.shape[-1]
            accumulated = (log_probs.reshape(batch, beams, vocab) + running_scores[:, :, None]).reshape(
                batch, -1
            )
            top_scores, top_index = _topk(accumulated, keep)
            top_beam, top_token = top_index // vocab, top_index % vocab
            top_sequences = np.take_along_axis(running, top_beam[:, :, None], axis=1)
            top_sequences[:, :, cur_len] = top_token
            top_lp = np.take_along_axis(running_lp, top_beam[:, :, None], axis=1)
            top_lp[:, :, cur_len - 1] = token_lp[rows, top_beam, top_token]
            hits = np.isin(top_token, self._eos) | (cur_len + 1 >= max_length)

            # The best `beams` continuations that did not finish run on.
            candidates = top_scores + hits.astype(np.float32) * _IMPOSSIBLE
            chosen = _topk(candidates, beams)[1]
            running = np.take_along_axis(top_sequences, chosen[:, :, None], axis=1)
            running_lp = np.take_along_axis(top_lp, chosen[:, :, None], axis=1)
            running_scores = np.take_along_axis(candidates, chosen, axis=1)
            parents = np.take_along_axis(top_beam, chosen, axis=1)

            # Finished continuations among the best `beams` replace worse finished hypotheses.
            just_finished = hits & first_k[None, :]
            scores = top_scores / np.float32(cur_len**settings.length_penalty)  # cur_len tokens generated
            if settings.early_stopping is True:
                scores = scores + (finished.all(axis=1, keepdims=True)).astype(np.float32) * _IMPOSSIBLE
            scores = scores + (~improvable).astype(np.float32) * _IMPOSSIBLE
            scores = scores + (~just_finished).astype(np.float32) * _IMPOSSIBLE
            merged_scores = np.concatenate([beam_scores, scores], axis=1)
            best = _topk(merged_scores, beams)[1]
            beam_scores = np.take_along_axis(merged_scores, best, axis=1)
            sequences = np.take_along_axis(np.concatenate([sequences, top_sequences], 1), best[:, :, None], 1)
            sequences_lp = np.take_along_axis(np.concatenate([sequences_lp, top_lp], 1), best[:, :, None], 1)
            finished = np.take_along_axis(np.concatenate([finished, just_finished], 1), best, axis=1)
            new_lengths = np.full((batch, keep), cur_len)
            lengths = np.take_along_axis(np.concatenate([lengths, new_lengths], 1), best, axis=1)

            cur_len += 1
            if settings.early_stopping == "never" and settings.length_penalty > 0.0:
                best_length = max_length - 1
            else:
                best_length = cur_len - 1
            best_running = running_scores[:, :1] / np.float32(best_length**settings.length_penalty)
            worst_finished = np.where(finished, beam_scores.min(axis=1, keepdims=True), _IMPOSSIBLE)
            improvable = improvable & (best_running > worst_finished).any(axis=-1, keepdims=True)
            open_beams = not (finished.all() and settings.early_stopping is True)
            if not (improvable.any() and open_beams and not hits.all()):
                break
            order = (parents + rows * beams).reshape(-1)
            past = [state[order] for state in past]
            logits, past = self.decode_step(running[:, :, cur_len - 1].reshape(-1, 1), mask, past, cross)
        # The best hypothesis of each sample (transformers' `num_return_sequences=1`).
        return [
            (sequences[i, 0, 1 : 1 + lengths[i, 0]].tolist(), sequences_lp[i, 0, : lengths[i, 0]].tolist())
            for i in range(batch)
        ]


def process_scores(sequences: np.ndarray, scores: np.ndarray, settings: SearchSettings) -> np.ndarray:
    """transformers' logits processors of these settings, in its order (n-gram blocking, forced BOS, forced EOS),
    applied in place to `scores (rows, V)`, the next-token scores after `sequences (rows, cur_len)`."""
    cur_len = sequences.shape[1]
    size = settings.no_repeat_ngram_size
    if size and cur_len >= size:
        # A window whose first n-1 tokens equal the current suffix bans its last token.
        windows = sliding_window_view(sequences, size, axis=1)
        matches = (windows[..., :-1] == sequences[:, None, cur_len + 1 - size :]).all(axis=-1)
        rows, columns = np.nonzero(matches)
        scores[rows, windows[rows, columns, -1]] = -np.inf
    forced = None
    if settings.forced_bos_token_id is not None and cur_len == 1:
        forced = settings.forced_bos_token_id
    if settings.forced_eos_token_id is not None and cur_len == settings.max_new_tokens:  # max_length - 1
        forced = settings.forced_eos_token_id
    if forced is not None:
        scores[:] = -np.inf
        scores[:, forced] = 0.0
    return scores


def _image(image: Image.Image | str | os.PathLike) -> Image.Image:
    return image if isinstance(image, Image.Image) else load_image(image)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=-1, keepdims=True)
    shifted = x - np.where(np.isfinite(top), top, 0)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _topk(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`torch.topk(x, k)` along the last axis, sorted descending (ties: lower index first)."""
    part = np.argpartition(-x, k - 1, axis=-1)[:, :k]
    values = np.take_along_axis(x, part, axis=-1)
    order = np.lexsort((part, -values), axis=-1)
    index = np.take_along_axis(part, order, axis=-1)
    return np.take_along_axis(x, index, axis=-1), index
