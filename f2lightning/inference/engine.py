"""Continuous batching: a running batch of decoder rows that requests join and leave, step by step.

`Florence2.generate` (transformers' loop) runs a batch until its longest answer ends, and every finished row
is computed until then. The engine keeps a running batch instead:

* A request (image, prompt, `Search`: `max_new_tokens`, `num_beams`, n-gram blocking) is encoded once when it
  enters: image encoder + BART's encoder over `[image tokens, prompt]` for a whole `RequestBatch` at once, and
  the cross-attention keys / values of every decoder layer from that output. They are the only per-request use
  of the encoder output, so the encoder states themselves are dropped.
* The decoder then runs one token per row per step over the running rows. A request that finishes (EOS, its
  own `max_new_tokens`, or beam search's own stopping rule) leaves at once and the next queued request takes
  its rows at the next step, so the running batch stays full until the queue is empty.

**Cache layout: padding + masks in static buffers, not per-row caches concatenated.** The running batch is
`max_batch_rows // width` *slots* of `width` rows (`width` = the largest `num_beams`; a request's beams are
the first rows of its slot, so they join, move and leave together). Each decoder layer has

* a self-attention buffer `(slots * width, heads, T, head_dim)`: row `r`'s token `t` sits at position `t`
  (left-aligned), written in place at each row's own position; a row attends to positions `< its length`
  through a boolean mask, so rows that joined at different steps share one tensor;
* a cross-attention buffer `(slots, heads, S, head_dim)` with a mask over each request's own encoder length.
  One slot's beams attend to the same keys, so the `width` beams are the query dimension of one attention call
  per slot: the beams share the keys / values in memory, and beam reordering never copies them (transformers
  copies the cross-attention cache of every beam at every step).

Positions are per row: BART's learned positions are `embed_positions.weight[t + 2]` (its offset) for row
position `t`. A new request restarts its slot at position 0, so nothing is shifted or re-padded when rows
leave or join, and no cache is concatenated per step: concatenating per-row caches would copy every row's
cache each step, the buffers copy only the beams that beam search reorders. `T` and `S` grow by doubling when
a longer request arrives (copying once), so shapes change rarely. When the queue runs dry, the last running
slot moves into a freed one (one slot's cache copied) and only the occupied slots are computed: the rows a
step computes are live rows, apart from a request with fewer beams than `width` (its spare rows are counted as
padding in `EngineStats`).

**Exactly transformers' search.** Greedy and beam search follow transformers' `_sample` / `_beam_search`
(transformers/generation/utils.py) step for step, vectorised over requests that each have their own length:
the same float32 log-softmax, logits processors in transformers' order (`no_repeat_ngram_size`, `min_length`,
`min_new_tokens`, forced BOS, forced EOS at each request's own `max_length - 1`), top `2 * num_beams`
candidates, the same `-1e9` masks (those that can apply to a request still running) and length penalty, the
`early_stopping` heuristic and stopping criteria per request. Settings come from the model's
`generation_config` (transformers' defaults where unset); a setting the engine does not implement is an error,
never ignored. Token log-probabilities are `compute_transition_scores(..., normalize_logits=True)`: the
log-softmax of the processed scores of the step, for the token each returned beam chose, carried along with
the beams. Outputs per request are those of `Florence2.generate` on that request alone
(tests/test_generation_engine.py): the same tokens, and log-probabilities up to float32 rounding (batched
matmuls round differently in the last bits; a few 1e-6 at most in the tests, which allow 1e-5).

**CUDA.** `bf16=True` runs encoders and steps under bf16 autocast (caches in bf16; search in float32, as
transformers does). `compile_step=True` compiles the decoder step with `torch.compile` and runs it on static
shapes (all slots, the whole `T` / `S` buffers: new shapes only when a buffer doubles), which suits CUDA
graphs; eager runs compute only the occupied slots and the longest row's positions. Neither was measured on a
GPU here. A step reads back which requests finished (a host sync; transformers' loop has one per step too)
and, in beam search, which rows changed parent.
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from f2lightning.inference.common import Generation, GenerationSettings, decode_generated
from f2lightning.model import Florence2

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from f2lightning.data.skips import SkipReport
    from f2lightning.processor import Florence2Processor

# transformers' beam search masks with this constant (not -inf) and its sums round as ours must.
NEG = -1.0e9
_MIN_BUFFER = 64  # first length of the self-attention buffers; they double from there

# `generate` kwargs a request may carry; the outputs ones are implied (the engine always knows its scores).
_KWARGS = {
    "max_new_tokens", "num_beams", "no_repeat_ngram_size", "min_new_tokens", "do_sample",
    "output_scores", "return_dict_in_generate",
}  # fmt: skip
# generation_config fields that change the search and that the engine does not implement, with the values that
# leave the search alone (None: unset, transformers' default then applies).
_NEUTRAL = {
    "do_sample": (None, False), "num_return_sequences": (None, 1), "repetition_penalty": (None, 1.0),
    "encoder_repetition_penalty": (None, 1.0), "encoder_no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,), "sequence_bias": (None,), "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,), "exponential_decay_length_penalty": (None,),
    "guidance_scale": (None, 1.0),
    "remove_invalid_values": (None, False), "renormalize_logits": (None, False), "num_beam_groups": (None, 1),
    "diversity_penalty": (None, 0.0), "force_words_ids": (None,), "constraints": (None,),
    "watermarking_config": (None,), "forced_decoder_ids": (None,),
}  # fmt: skip


def _setting(config: Any, name: str, default: Any) -> Any:
    value = getattr(config, name, None)
    return default if value is None else value


@dataclass(frozen=True)
class Search:
    """How one request decodes: the `Florence2.generate` settings the engine implements."""

    max_new_tokens: int
    num_beams: int = 1
    no_repeat_ngram_size: int = 0
    min_new_tokens: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.num_beams < 1 or self.no_repeat_ngram_size < 0:
            raise ValueError(f"invalid search settings {self}")

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any], generation_config: Any) -> Search:
        """`generate` kwargs (`generation_kwargs`' dict) over the model's `generation_config`, as `generate`
        merges them; kwargs the engine does not implement are an error."""
        unknown = sorted(set(kwargs) - _KWARGS)
        if unknown:
            raise ValueError(f"the continuous engine does not implement generate({', '.join(unknown)}=...)")
        if kwargs.get("do_sample", False):
            raise ValueError("the continuous engine decodes greedily or by beam search, not by sampling")

        def setting(name: str, default: Any) -> Any:
            # A kwarg wins even when it is 0 (no_repeat_ngram_size=0 switches the config's blocking off).
            value = kwargs.get(name)
            return _setting(generation_config, name, default) if value is None else value

        max_new_tokens = setting("max_new_tokens", None)
        if max_new_tokens is None:
            raise ValueError("the continuous engine needs max_new_tokens")
        return cls(
            max_new_tokens=int(max_new_tokens),
            num_beams=int(setting("num_beams", 1)),
            no_repeat_ngram_size=int(setting("no_repeat_ngram_size", 0)),
            min_new_tokens=int(setting("min_new_tokens", 0)),
        )


@dataclass(frozen=True)
class _Rules:
    """The model-wide part of the search, read from its `generation_config` once."""

    decoder_start: int
    eos: tuple[int, ...]
    forced_bos: int | None
    forced_eos: tuple[int, ...] | None
    min_length: int
    length_penalty: float
    early_stopping: bool | str

    @classmethod
    def of(cls, config: Any) -> _Rules:
        unsupported = sorted(
            name for name, neutral in _NEUTRAL.items() if getattr(config, name, None) not in neutral
        )
        if unsupported:
            raise ValueError(
                f"the model's generation_config sets {unsupported}, which the continuous engine does not "
                "implement: use GenerationSettings(engine='batched')"
            )

        def ids(value: Any) -> tuple[int, ...] | None:
            return (
                None if value is None else tuple(value) if isinstance(value, list | tuple) else (int(value),)
            )

        eos = ids(config.eos_token_id)
        if eos is None or config.decoder_start_token_id is None:
            raise ValueError("generation needs eos_token_id and decoder_start_token_id in generation_config")
        return cls(
            decoder_start=int(config.decoder_start_token_id),
            eos=eos,
            forced_bos=config.forced_bos_token_id,
            forced_eos=ids(config.forced_eos_token_id),
            min_length=int(_setting(config, "min_length", 0)),
            length_penalty=float(_setting(config, "length_penalty", 1.0)),
            early_stopping=_setting(config, "early_stopping", False),
        )


@dataclass
class RequestBatch:
    """Requests encoded together (`PromptBatches`' tensors on the model's device), a key and a Search each.
    Prompts are right-padded with `attention_mask` marking the real tokens, as `Florence2.generate` wants."""

    keys: Sequence[Hashable]
    searches: Sequence[Search]
    pixel_values: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    image_index: torch.Tensor | None = None


@dataclass(frozen=True)
class Finished:
    """One request's answer: the generated ids (after the decoder start token, EOS included when generated),
    each token's log-probability when asked for, and how many decoder steps the request ran."""

    key: Hashable
    token_ids: list[int]
    token_logprobs: list[float] | None
    steps: int


@dataclass
class EngineStats:
    """Counts over every run of one engine. `rows_computed`: decoder rows the steps ran; `rows_live`: those
    that were a running request's beams. `joined_late`: requests that took rows another request left."""

    requests: int = 0
    steps: int = 0
    rows_computed: int = 0
    rows_live: int = 0
    joined_late: int = 0

    @property
    def padding_share(self) -> float:
        return 1.0 - self.rows_live / self.rows_computed if self.rows_computed else 0.0


@dataclass
class _Encoded:
    """A RequestBatch's cross-attention keys / values per decoder layer, `(batch, heads, S, head_dim)`."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    mask: torch.Tensor  # (batch, S) bool


@dataclass
class _Request:
    key: Hashable
    search: Search
    encoded: _Encoded | None  # until it joins: then its keys / values live in the slot's buffers
    index: int  # its row in `encoded`
    source_length: int  # encoder positions of its batch (its mask covers them)
    length: int = 1  # decoder tokens so far, the start token included (transformers' `cur_len`)
    steps: int = 0


class GenerationEngine:
    """Runs `RequestBatch`es through a running batch of at most `max_batch_rows` decoder rows (see the module
    docstring).

    `num_beams` is the slot width: the most beams a request may ask for (requests with fewer leave spare
    rows). `with_logprobs` also returns each token's log-probability. `stats` counts steps and rows over all
    runs.
    """

    def __init__(
        self,
        model: Florence2,
        max_batch_rows: int,
        num_beams: int,
        *,
        with_logprobs: bool = False,
        bf16: bool = False,
        compile_step: bool = False,
    ) -> None:
        if max_batch_rows < num_beams:
            raise ValueError(f"max_batch_rows ({max_batch_rows}) must hold one request's {num_beams} beams")
        self.model = model
        language = model.language_model
        self.rules = _Rules.of(language.generation_config)
        self.decoder = language.model.decoder
        self.encoder = language.model.encoder
        self.lm_head = language.lm_head
        self.final_logits_bias = language.final_logits_bias
        self.width = num_beams
        self.capacity = max_batch_rows // num_beams
        self.with_logprobs = with_logprobs
        self.bf16 = bf16
        self.static = compile_step
        self._step = torch.compile(self._decode_step, dynamic=False) if compile_step else self._decode_step
        attention = self.decoder.layers[0].self_attn
        self.heads, self.head_dim = attention.num_heads, attention.head_dim
        self.stats = EngineStats()
        # The scores transformers' processors write: EOS columns, and -inf but 0 at a forced BOS / EOS token.
        device, vocab = self.device, self.final_logits_bias.shape[-1]
        self.eos_ids = torch.tensor(self.rules.eos, device=device)
        self.eos_columns = torch.zeros(vocab, dtype=torch.bool, device=device)
        self.eos_columns[self.eos_ids] = True
        self.forced_bos_row = self.forced_eos_row = None
        for name, tokens in (
            ("forced_bos_row", self.rules.forced_bos),
            ("forced_eos_row", self.rules.forced_eos),
        ):
            if tokens is not None:
                row = torch.full((vocab,), -math.inf, device=device)
                row[torch.tensor(tokens, device=device)] = 0.0
                setattr(self, name, row)

    # ------------------------------------------------------------------ running
    def run(self, batches: Iterable[RequestBatch]) -> Iterator[list[Finished]]:
        """Answers as requests finish, one list per step that finished any (not in input order). Batches are
        pulled, encoded and admitted only when rows are free, so `batches` may be a lazy loader."""
        self._reset()
        source = iter(batches)
        while True:
            with self._compute():
                finished = self._advance(source)
            if finished is None:
                return
            if finished:
                yield finished

    def _compute(self) -> contextlib.AbstractContextManager:
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        if self.bf16:
            stack.enter_context(torch.autocast(self.device.type, dtype=torch.bfloat16))
        return stack

    @property
    def device(self) -> torch.device:
        return self.final_logits_bias.device

    def _reset(self) -> None:
        self.slots: list[_Request | None] = [None] * self.capacity
        self.pending: deque[_Request] = deque()
        self.buffers_ready = False
        self.started = False

    def _advance(self, source: Iterator[RequestBatch]) -> list[Finished] | None:
        """Admit requests into free slots, run one decoder step and one search step; None when all is done."""
        self._admit(source)
        self._compact()
        running = [request for request in self.slots if request is not None]
        if not running:
            return None
        self.started = True
        n = self.capacity if self.static else len(running)
        logits = self._forward(n, running)
        self.stats.steps += 1
        self.stats.rows_computed += n * self.width
        self.stats.rows_live += sum(request.search.num_beams for request in running)
        return self._search(logits, running)

    # ------------------------------------------------------------------ admission
    def _admit(self, source: Iterator[RequestBatch]) -> None:
        free = [slot for slot, request in enumerate(self.slots) if request is None]
        joins: list[tuple[int, _Request]] = []
        while free:
            if not self.pending:
                batch = next(source, None)
                if batch is None:
                    break
                self.pending.extend(self._encode(batch))
            joins.append((free.pop(0), self.pending.popleft()))
        groups: dict[int, list[tuple[int, _Request]]] = {}
        for slot, request in joins:
            groups.setdefault(id(request.encoded), []).append((slot, request))
        for group in groups.values():
            self._join(group)
        self.stats.joined_late += len(joins) if self.started else 0

    def _encode(self, batch: RequestBatch) -> list[_Request]:
        """Image encoder + BART's encoder as `Florence2.generate` runs them, then each layer's cross-attention
        keys / values."""
        for search in batch.searches:
            if search.num_beams > self.width:
                raise ValueError(
                    f"a request asks for {search.num_beams} beams, the engine's slots hold {self.width}"
                )
        embeds, mask = self.model.embed_inputs(
            batch.pixel_values, batch.input_ids, batch.attention_mask, batch.image_index
        )
        states = self.encoder(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        size, length = states.shape[:2]
        keys, values = [], []
        for layer in self.decoder.layers:
            attention = layer.encoder_attn
            for projection, out in ((attention.k_proj, keys), (attention.v_proj, values)):
                out.append(projection(states).view(size, length, self.heads, self.head_dim).transpose(1, 2))
        encoded = _Encoded(keys, values, mask.bool())
        self._ensure_buffers(keys[0].dtype, length)
        return [
            _Request(key, search, encoded, i, length)
            for i, (key, search) in enumerate(zip(batch.keys, batch.searches, strict=True))
        ]

    def _join(self, group: list[tuple[int, _Request]]) -> None:
        """Requests of one encoded batch take their slots: cross keys / values in, search state reset."""
        slots = torch.tensor([slot for slot, _ in group], device=self.device)
        rows = torch.tensor([request.index for _, request in group], device=self.device)
        encoded = group[0][1].encoded
        assert encoded is not None
        length = encoded.mask.shape[1]
        for layer in range(len(self.decoder.layers)):
            self.cross_k[layer][slots, :, :length] = encoded.keys[layer].index_select(0, rows)
            self.cross_v[layer][slots, :, :length] = encoded.values[layer].index_select(0, rows)
        self.cross_mask[slots] = False
        self.cross_mask[slots, :length] = encoded.mask.index_select(0, rows)
        searches = [request.search for _, request in group]
        self.lengths[slots] = 1
        self.seq[slots] = self.rules.eos[0]  # any valid id: spare rows of a slot feed it
        self.seq[slots, :, 0] = self.rules.decoder_start
        # transformers starts beam 0 at 0 and the other beams at -1e9, so the first step expands beam 0 only.
        self.run_scores[slots] = NEG
        self.run_scores[slots, 0] = 0.0
        self.fin_scores[slots] = NEG
        self.fin_flag[slots] = False
        self.fin_len[slots] = 0
        self.max_length[slots] = torch.tensor([1 + s.max_new_tokens for s in searches], device=self.device)
        self.min_new[slots] = torch.tensor([s.min_new_tokens for s in searches], device=self.device)
        self.ngram[slots] = torch.tensor([s.no_repeat_ngram_size for s in searches], device=self.device)
        for slot, request in group:
            self.slots[slot] = request
            request.encoded = None  # the batch's encoding is freed once its last request joined

    def _compact(self) -> None:
        """With nothing left to admit, move the last running slot into each free one below it, so that the
        running slots are a prefix and eager steps compute no empty rows."""
        if self.static or self.pending:
            return
        while True:
            free = [slot for slot, request in enumerate(self.slots) if request is None]
            used = [slot for slot, request in enumerate(self.slots) if request is not None]
            if not free or not used or free[0] > used[-1]:
                return
            self._move(used[-1], free[0])

    def _move(self, source: int, target: int) -> None:
        width, length = self.width, self.slots[source].length  # type: ignore[union-attr]
        rows_from, rows_to = (
            slice(source * width, (source + 1) * width),
            slice(target * width, (target + 1) * width),
        )
        for layer in range(len(self.decoder.layers)):
            self.self_k[layer][rows_to, :, :length] = self.self_k[layer][rows_from, :, :length]
            self.self_v[layer][rows_to, :, :length] = self.self_v[layer][rows_from, :, :length]
            self.cross_k[layer][target] = self.cross_k[layer][source]
            self.cross_v[layer][target] = self.cross_v[layer][source]
        for tensor in self._slot_tensors():
            tensor[target] = tensor[source]
        self.slots[target], self.slots[source] = self.slots[source], None

    # ------------------------------------------------------------------ buffers
    def _slot_tensors(self) -> list[torch.Tensor]:
        tensors = [self.cross_mask, self.lengths, self.seq, self.run_scores, self.fin_seq, self.fin_scores,
                   self.fin_flag, self.fin_len, self.max_length, self.min_new, self.ngram]  # fmt: skip
        return tensors + ([self.run_logprobs, self.fin_logprobs] if self.with_logprobs else [])

    def _ensure_buffers(self, dtype: torch.dtype, source_length: int) -> None:
        if not self.buffers_ready:
            self._allocate(dtype)
        if source_length > self.cross_mask.shape[1]:
            self._grow_source(source_length)

    def _allocate(self, dtype: torch.dtype) -> None:
        slots, rows, device = self.capacity, self.capacity * self.width, self.device
        layers = len(self.decoder.layers)

        def cache(count: int) -> list[torch.Tensor]:
            return [
                torch.zeros(count, self.heads, 0, self.head_dim, dtype=dtype, device=device)
                for _ in range(layers)
            ]

        self.self_k, self.self_v, self.cross_k, self.cross_v = (
            cache(rows),
            cache(rows),
            cache(slots),
            cache(slots),
        )
        self.cross_mask = torch.zeros(slots, 0, dtype=torch.bool, device=device)
        long, beams = dict(dtype=torch.long, device=device), (slots, self.width)
        self.lengths, self.max_length = torch.ones(slots, **long), torch.ones(slots, **long)
        self.min_new, self.ngram = torch.zeros(slots, **long), torch.zeros(slots, **long)
        self.seq, self.fin_seq = torch.zeros(*beams, 0, **long), torch.zeros(*beams, 0, **long)
        self.run_scores = torch.zeros(beams, device=device)
        self.fin_scores = torch.zeros(beams, device=device)
        self.fin_flag = torch.zeros(beams, dtype=torch.bool, device=device)
        self.fin_len = torch.zeros(beams, **long)
        if self.with_logprobs:
            self.run_logprobs = torch.zeros(*beams, 0, device=device)
            self.fin_logprobs = torch.zeros(*beams, 0, device=device)
        self.buffers_ready = True
        self._grow_length(_MIN_BUFFER)

    @staticmethod
    def _grown(tensor: torch.Tensor, dim: int, size: int) -> torch.Tensor:
        shape = list(tensor.shape)
        shape[dim] = size
        grown = tensor.new_zeros(shape)
        grown.narrow(dim, 0, tensor.shape[dim]).copy_(tensor)
        return grown

    def _grow_length(self, needed: int) -> None:
        size = max(_MIN_BUFFER, 1 << math.ceil(math.log2(needed)))
        for caches in (self.self_k, self.self_v):
            caches[:] = [self._grown(cache, 2, size) for cache in caches]
        for name in ("seq", "fin_seq", *(("run_logprobs", "fin_logprobs") if self.with_logprobs else ())):
            setattr(self, name, self._grown(getattr(self, name), 2, size))

    def _grow_source(self, needed: int) -> None:
        size = max(_MIN_BUFFER, 1 << math.ceil(math.log2(needed)))
        for caches in (self.cross_k, self.cross_v):
            caches[:] = [self._grown(cache, 2, size) for cache in caches]
        self.cross_mask = self._grown(self.cross_mask, 1, size)

    # ------------------------------------------------------------------ decoder step
    def _forward(self, n: int, running: list[_Request]) -> torch.Tensor:
        """Logits `(n, width, vocab)` in float32 for the next token of the first `n` slots' rows."""
        longest = max(request.length for request in running)
        if longest + 1 > self.seq.shape[2]:  # this step writes token `length` into the sequences
            self._grow_length(longest + 1)
        span = self.seq.shape[2] if self.static else longest
        source = self.cross_mask.shape[1] if self.static else self._source_span(n)
        # Static steps also run empty slots, whose stale length may be 0.
        lengths = self.lengths[:n].clamp(min=1)
        last = (lengths - 1).view(n, 1, 1).expand(n, self.width, 1)
        tokens = self.seq[:n].gather(2, last).view(-1)
        positions = last.reshape(-1)
        self_mask = torch.arange(span, device=self.device) < lengths[:, None]
        self_mask = self_mask.repeat_interleave(self.width, 0).view(n * self.width, 1, 1, span)
        cross_mask = self.cross_mask[:n, :source].view(n, 1, 1, source)
        if self.static:  # empty slots attend to one position rather than none (no NaN rows)
            cross_mask = cross_mask | (torch.arange(source, device=self.device) == 0)
        logits = self._step(tokens, positions, self_mask, cross_mask)
        return logits.float().view(n, self.width, -1)

    def _source_span(self, n: int) -> int:
        """Encoder positions any of the first `n` slots attends to (the rest of the buffer is masked out)."""
        return max(request.source_length for request in self.slots[:n] if request is not None)

    def _decode_step(
        self, tokens: torch.Tensor, positions: torch.Tensor, self_mask: torch.Tensor, cross_mask: torch.Tensor
    ) -> torch.Tensor:
        """BART's decoder layers (transformers' BartDecoderLayer, post-LayerNorm) for one token per row, with
        the buffers as caches; the new keys / values are written at each row's own position."""
        decoder, rows, slots = self.decoder, tokens.shape[0], cross_mask.shape[0]
        width, span, source = rows // slots, self_mask.shape[-1], cross_mask.shape[-1]
        table = decoder.embed_positions
        hidden = decoder.embed_tokens(tokens) + F.embedding(positions + table.offset, table.weight)
        hidden = decoder.layernorm_embedding(hidden)
        row_index = torch.arange(rows, device=tokens.device)
        for layer, block in enumerate(decoder.layers):
            attention = block.self_attn
            query = attention.q_proj(hidden).view(rows, self.heads, 1, self.head_dim)
            key = attention.k_proj(hidden).view(rows, self.heads, self.head_dim)
            value = attention.v_proj(hidden).view(rows, self.heads, self.head_dim)
            self.self_k[layer][row_index, :, positions] = key
            self.self_v[layer][row_index, :, positions] = value
            keys, values = self.self_k[layer][:rows, :, :span], self.self_v[layer][:rows, :, :span]
            out = F.scaled_dot_product_attention(
                query, keys, values, attn_mask=self_mask, scale=attention.scaling
            )
            hidden = block.self_attn_layer_norm(hidden + attention.out_proj(out.view(rows, -1)))

            attention = block.encoder_attn
            query = attention.q_proj(hidden).view(slots, width, self.heads, self.head_dim).transpose(1, 2)
            keys = self.cross_k[layer][:slots, :, :source]
            values = self.cross_v[layer][:slots, :, :source]
            out = F.scaled_dot_product_attention(
                query, keys, values, attn_mask=cross_mask, scale=attention.scaling
            )
            out = out.transpose(1, 2).reshape(rows, -1)
            hidden = block.encoder_attn_layer_norm(hidden + attention.out_proj(out))

            hidden = block.final_layer_norm(hidden + block.fc2(block.activation_fn(block.fc1(hidden))))
        return self.lm_head(hidden) + self.final_logits_bias

    # ------------------------------------------------------------------ search step
    def _search(self, logits: torch.Tensor, running: list[_Request]) -> list[Finished]:
        """Greedy / beam search step of every running request; returns those that finished (their slots
        free)."""
        groups: dict[int, list[int]] = {}
        for slot, request in enumerate(self.slots):
            if request is not None:
                groups.setdefault(request.search.num_beams, []).append(slot)
        done: list[int] = []
        for beams, slots in groups.items():
            index = torch.tensor(slots, device=self.device)
            step = self._greedy if beams == 1 else self._beam
            flags = step(logits.index_select(0, index)[:, :beams], index, [self.slots[s] for s in slots])
            done += [slot for slot, finished in zip(slots, flags, strict=True) if finished]
        for request in running:
            request.length += 1
            request.steps += 1
        return self._finish(sorted(done))

    def _processed(self, scores: torch.Tensor, history: torch.Tensor, lengths: torch.Tensor,
                   index: torch.Tensor, requests: list[_Request], beams: int) -> torch.Tensor:  # fmt: skip
        """transformers' logits processors for our settings, in its order, each row at its own length.

        `scores`: `(rows, vocab)`; `history`: the rows' tokens so far (valid below `lengths`); `index`: the
        rows' slots, `beams` rows each."""
        rules = self.rules
        sizes = [request.search.no_repeat_ngram_size for request in requests]
        for size in sorted(set(sizes) - {0}):
            rows = (
                None
                if all(s == size for s in sizes)
                else (self.ngram[index] == size).repeat_interleave(beams)
            )
            scores = _ban_repeated_ngrams(scores, history, lengths, size, rows)
        if rules.min_length > 0 or any(request.search.min_new_tokens for request in requests):
            blocked = (lengths < rules.min_length) | (
                lengths - 1 < self.min_new[index].repeat_interleave(beams)
            )
            scores = scores.masked_fill(blocked[:, None] & self.eos_columns, -math.inf)
        if rules.forced_bos is not None:
            scores = torch.where((lengths == 1)[:, None], self.forced_bos_row, scores)
        if rules.forced_eos is not None:
            at_end = lengths == self.max_length[index].repeat_interleave(beams) - 1
            scores = torch.where(at_end[:, None], self.forced_eos_row, scores)
        return scores

    def _greedy(self, logits: torch.Tensor, index: torch.Tensor, requests: list[_Request]) -> list[bool]:
        """transformers' `_sample` without sampling: processors on the raw logits, argmax."""
        logits = logits[:, 0]
        span = max(request.length for request in requests)
        lengths = self.lengths.index_select(0, index)
        history = self.seq.index_select(0, index)[:, 0, :span]
        scores = self._processed(logits, history, lengths, index, requests, 1)
        tokens = scores.argmax(-1)
        self.seq[index, 0, lengths] = tokens
        if self.with_logprobs:
            self.run_logprobs[index, 0, lengths] = (
                scores.log_softmax(-1).gather(1, tokens[:, None]).squeeze(1)
            )
        self.lengths[index] = lengths + 1
        done = torch.isin(tokens, self.eos_ids) | (lengths + 1 >= self.max_length.index_select(0, index))
        return done.tolist()

    def _beam(self, logits: torch.Tensor, index: torch.Tensor, requests: list[_Request]) -> list[bool]:
        """One step of transformers' `_beam_search` for `g` requests of `k` beams, each at its own length."""
        g, k, vocab = logits.shape
        rules, span, length_total = self.rules, max(request.length for request in requests), self.seq.shape[2]
        lengths = self.lengths.index_select(0, index)
        row_lengths = lengths.repeat_interleave(k)
        history = self.seq.index_select(0, index)[:, :k, :span].reshape(g * k, span)
        log_probs = logits.reshape(g * k, vocab).log_softmax(-1)
        processed = self._processed(log_probs, history, row_lengths, index, requests, k)
        accumulated = processed.view(g, k, vocab) + self.run_scores.index_select(0, index)[:, :k, None]
        keep = max(2, 1 + len(rules.eos)) * k
        top_scores, top_index = accumulated.view(g, k * vocab).topk(keep, dim=1)
        beam, tokens = top_index // vocab, top_index % vocab
        position = lengths.view(g, 1, 1).expand(g, keep, 1)

        def candidates(state: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
            """Each candidate's history (its beam's) with its new entry at the request's position."""
            gathered = state.index_select(0, index)[:, :k].gather(
                1, beam[..., None].expand(g, keep, length_total)
            )
            return gathered.scatter_(2, position, new[..., None])

        top_seq = candidates(self.seq, tokens)
        if self.with_logprobs:
            normalized = processed.log_softmax(-1).view(g, k, vocab)
            token_logprobs = normalized[torch.arange(g, device=self.device)[:, None], beam, tokens]
            top_logprobs = candidates(self.run_logprobs, token_logprobs)
        max_length = self.max_length.index_select(0, index)
        hits = torch.isin(tokens, self.eos_ids) | (lengths + 1 >= max_length)[:, None]

        # Running beams for the next step: the best `k` candidates that did not finish.
        running = top_scores + hits.to(torch.float32) * NEG
        chosen = running.topk(k, dim=1).indices
        expand = chosen[..., None].expand(g, k, length_total)
        self.seq[index, :k] = top_seq.gather(1, expand)
        new_running = running.gather(1, chosen)
        self.run_scores[index, :k] = new_running
        parents = beam.gather(1, chosen)
        if self.with_logprobs:
            self.run_logprobs[index, :k] = top_logprobs.gather(1, expand)

        # Finished hypotheses: the best `k` of those kept so far and the top-`k` candidates that just
        # finished. transformers also masks the candidates of requests that are done (full beams under early
        # stopping, or no improvement possible), still computed in its batch; ours have left.
        just_finished = hits & (torch.arange(keep, device=self.device) < k)
        penalty = (lengths.double() ** rules.length_penalty).float()[:, None]
        finished_scores = top_scores / penalty + (~just_finished).to(torch.float32) * NEG
        fin_flag = self.fin_flag.index_select(0, index)[:, :k]
        merged_scores = torch.cat([self.fin_scores.index_select(0, index)[:, :k], finished_scores], 1)
        best = merged_scores.topk(k, dim=1).indices
        best_expand = best[..., None].expand(g, k, length_total)
        fin_seq = torch.cat([self.fin_seq.index_select(0, index)[:, :k], top_seq], 1).gather(1, best_expand)
        self.fin_seq[index, :k] = fin_seq
        fin_scores = merged_scores.gather(1, best)
        self.fin_scores[index, :k] = fin_scores
        fin_flag = torch.cat([fin_flag, just_finished], 1).gather(1, best)
        self.fin_flag[index, :k] = fin_flag
        generated = lengths[:, None].expand(g, keep)  # a candidate's tokens after the start token
        self.fin_len[index, :k] = torch.cat(
            [self.fin_len.index_select(0, index)[:, :k], generated], 1
        ).gather(1, best)
        if self.with_logprobs:
            fin_logprobs = torch.cat([self.fin_logprobs.index_select(0, index)[:, :k], top_logprobs], 1)
            self.fin_logprobs[index, :k] = fin_logprobs.gather(1, best_expand)

        # Stopping: transformers' early-stopping heuristic and its loop condition, per request.
        new_lengths = lengths + 1
        self.lengths[index] = new_lengths
        if rules.early_stopping == "never" and rules.length_penalty > 0.0:
            hypothetical = max_length - 1
        else:
            hypothetical = new_lengths - 1
        best_running = new_running[:, :1] / (hypothetical.double() ** rules.length_penalty).float()[:, None]
        worst_finished = torch.where(fin_flag, fin_scores.min(1, keepdim=True).values, NEG)
        # transformers keeps this flag sticky over steps; a running request's is still set, so it is this.
        unsatisfied = (best_running > worst_finished).any(-1)
        open_beam = ~(fin_flag.all(-1) & (rules.early_stopping is True))
        done = ~(unsatisfied & open_beam & ~hits.all(-1))
        self._reorder(index, parents, span)
        return done.tolist()

    def _reorder(self, index: torch.Tensor, parents: torch.Tensor, span: int) -> None:
        """Each beam takes its parent's self-attention cache (positions below `span`); unmoved rows stay."""
        k = parents.shape[1]
        base = index[:, None] * self.width
        target = (base + torch.arange(k, device=self.device)).view(-1)
        source = (base + parents).view(-1)
        moved = source != target
        target, source = target[moved], source[moved]
        if target.numel() == 0:
            return
        for caches in (self.self_k, self.self_v):
            for cache in caches:
                positions = cache[:, :, :span]  # a view: index_copy_ writes the buffer (faster than setitem)
                positions.index_copy_(0, target, positions.index_select(0, source))

    def _finish(self, done: list[int]) -> list[Finished]:
        """The answers of the requests in slots `done` (greedy: the running row; beams: the best finished
        hypothesis), and their slots freed."""
        if not done:
            return []
        index = torch.tensor(done, device=self.device)
        requests = [self.slots[slot] for slot in done]
        beams = [request.search.num_beams for request in requests]  # type: ignore[union-attr]
        greedy = torch.tensor([k == 1 for k in beams], device=self.device)

        def best(running: torch.Tensor, finished: torch.Tensor) -> torch.Tensor:
            return torch.where(
                greedy[:, None], running.index_select(0, index)[:, 0], finished.index_select(0, index)[:, 0]
            )

        sequences = best(self.seq, self.fin_seq).tolist()
        counts = torch.where(
            greedy, self.lengths.index_select(0, index) - 1, self.fin_len.index_select(0, index)[:, 0]
        ).tolist()
        logprobs = best(self.run_logprobs, self.fin_logprobs).tolist() if self.with_logprobs else None
        out = []
        for i, (slot, request) in enumerate(zip(done, requests, strict=True)):
            assert request is not None
            count = counts[i]
            tokens = sequences[i][1 : 1 + count]
            out.append(
                Finished(
                    request.key,
                    tokens,
                    logprobs[i][1 : 1 + count] if logprobs is not None else None,
                    request.steps,
                )
            )
            self.slots[slot] = None
        self.stats.requests += len(out)
        return out


def _ban_repeated_ngrams(
    scores: torch.Tensor, history: torch.Tensor, lengths: torch.Tensor, size: int, rows: torch.Tensor | None
) -> torch.Tensor:
    """transformers' NoRepeatNGramLogitsProcessor per row of its own length (`rows`: the rows it applies to).

    A window of `size` tokens that starts with the row's last `size - 1` tokens bans its own last token; only
    windows that end before the last token count (the one starting at the prefix needs one token more)."""
    span = history.shape[1]
    if span < size:
        return scores
    windows = history.unfold(1, size, 1)
    offsets = torch.arange(size - 1, device=history.device)
    prefix = history.gather(1, (lengths[:, None] - (size - 1)).clamp(min=0) + offsets)
    valid = torch.arange(span - size + 1, device=history.device) <= (lengths - size)[:, None]
    if rows is not None:
        valid &= rows[:, None]
    matches = (windows[..., :-1] == prefix[:, None]).all(-1) & valid
    vocab = scores.shape[-1]
    banned = torch.zeros(scores.shape[0], vocab + 1, dtype=torch.bool, device=scores.device)
    banned.scatter_(1, torch.where(matches, windows[..., -1].clamp(max=vocab), vocab), True)
    return scores.masked_fill(banned[:, :vocab], -math.inf)


# ------------------------------------------------------------------ generations() with the engine
def continuous_generations(
    model: Florence2,
    processor: Florence2Processor,
    loader: DataLoader,
    kwargs: dict[str, Any],
    settings: GenerationSettings,
    report: SkipReport | None,
) -> Iterator[list[tuple[int, Generation]]]:
    """`generations()` through the engine: `loader` yields `PromptBatches`' batches, the running batch holds
    `settings.batch_size` requests (`batch_size * num_beams` rows); lists come as requests finish."""

    search = Search.from_kwargs(kwargs, model.language_model.generation_config)
    engine = GenerationEngine(
        model,
        settings.batch_size * search.num_beams,
        search.num_beams,
        with_logprobs=bool(kwargs.get("output_scores")),
        bf16=settings.bf16,
    )
    device = torch.device(settings.device)

    def requests() -> Iterator[RequestBatch]:
        for batch in loader:
            for _, reason, message in batch["skipped"]:
                report.drop(reason, example=message)  # type: ignore[union-attr]  # only skipped with a report
            if batch["indices"]:
                tensors = {
                    name: batch[name].to(device, non_blocking=True)
                    for name in ("pixel_values", "input_ids", "attention_mask", "image_index")
                }
                yield RequestBatch(batch["indices"], [search] * len(batch["indices"]), **tensors)

    for finished in engine.run(requests()):
        yield [
            (int(f.key), Generation(decode_generated(processor, f.token_ids), f.token_ids, f.token_logprobs))
            for f in finished
        ]
