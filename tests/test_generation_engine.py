"""The continuous-batching engine answers every request exactly as `Florence2.generate` does on that request
alone (same tokens, log-probabilities to float32 rounding), while requests join and leave a running batch."""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from f2lightning.evaluation.samples import EvalSample
from f2lightning.inference.engine import GenerationEngine, RequestBatch, Search
from f2lightning.inference.generation import Generation, GenerationSettings, generate, generate_batch
from f2lightning.inference.generation import generation_kwargs as task_kwargs
from f2lightning.inference.results import scored_result
from f2lightning.model import Florence2
from f2lightning.processor import Florence2Processor, share_images
from tests.helpers.weights import randomize_, tiny_checkpoint

SIZE = (64, 48)
COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]
QUESTIONS = ["what is it?", "what colour is the large square on the left of the picture?", "how many?"]
REGIONS = [(4.0, 4.0, 40.0, 30.0), (10.0, 2.0, 60.0, 46.0)]
# n-gram blocking (<CAPTION>, <VQA>) and none (<OD>, <REGION_TO_CATEGORY>); prompts of different lengths.
TASKS = ["<OD>", "<CAPTION>", "<VQA>", "<REGION_TO_CATEGORY>"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("checkpoint"))


@pytest.fixture(scope="module")
def processor(checkpoint) -> Florence2Processor:
    return Florence2Processor.from_pretrained(checkpoint)


@pytest.fixture(scope="module")
def model(checkpoint) -> Florence2:
    """The tiny checkpoint as saved: its answers mostly run to their budget."""
    return Florence2.from_pretrained(checkpoint).eval()


@pytest.fixture(scope="module")
def eos_model(checkpoint) -> Florence2:
    """Larger weights: answers end at EOS after 1 to 20 tokens, so rows leave when the model decides, and beam
    hypotheses finish before the budget. These weights also amplify float32 rounding: a request encoded in a
    batch (`Florence2.generate` on a batch as much as the engine) moves log-probabilities by up to ~7e-5 from
    the request encoded alone, so requests reach this model's engine one per `RequestBatch`."""
    return randomize_(Florence2.from_pretrained(checkpoint), std=0.2, seed=1).eval()


@pytest.fixture(scope="module")
def alone(model, eos_model, processor, images):
    """`_alone`, remembered per model: hypothesis draws the same request again and again."""
    return {
        id(m): functools.cache(lambda request, m=m: _alone(m, processor, images, request))
        for m in (model, eos_model)
    }


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    out = []
    for i, color in enumerate(COLORS):
        image = Image.new("RGB", SIZE, color)
        image.paste((255, 255, 255), (8 * i, 4, 8 * i + 20, 30))
        out.append(image)
    return out


# A request: (image number, task, text input or region number, max_new_tokens, num_beams, min_new_tokens).
def requests():
    def one(task: str):
        inputs = (
            st.sampled_from(range(len(QUESTIONS)))
            if task == "<VQA>"
            else st.sampled_from(range(len(REGIONS)))
            if task == "<REGION_TO_CATEGORY>"
            else st.none()
        )
        return st.integers(1, 24).flatmap(
            lambda budget: st.tuples(
                st.sampled_from(range(len(COLORS))),
                st.just(task),
                inputs,
                st.just(budget),
                st.sampled_from([1, 3]),
                st.sampled_from([0, 0, budget // 2, budget - 1]),
            )
        )

    return st.sampled_from(TASKS).flatmap(one)


def _kwargs(processor, request) -> dict:
    _, task, _, budget, beams, min_new = request
    kwargs = task_kwargs(processor, task, beams, budget, with_logprobs=True)
    kwargs["max_new_tokens"] = budget  # exactly the drawn budget, under any task's own
    if min_new:
        kwargs["min_new_tokens"] = min_new
    return kwargs


def _inputs(processor, images, chunk) -> dict:
    texts = [QUESTIONS[r[2]] if r[1] == "<VQA>" else None for r in chunk]
    regions = [REGIONS[r[2]] if r[1] == "<REGION_TO_CATEGORY>" else None for r in chunk]
    batch = processor(
        [images[r[0]] for r in chunk], [r[1] for r in chunk], text_inputs=texts, regions=regions
    )
    # Questions about one image share its encoding, as `PromptBatches` makes them.
    firsts, image_index = share_images([r[0] for r in chunk])
    return {"pixel_values": batch["pixel_values"][firsts], "image_index": image_index,
            "input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}  # fmt: skip


def _alone(model, processor, images, request) -> Generation:
    """`Florence2.generate` on the request alone (`generate_batch`: the engine="batched" path)."""
    return generate_batch(
        model, processor, _inputs(processor, images, [request]), _kwargs(processor, request)
    )[0]


def _engine_run(
    model, processor, images, requests_, rows: int, chunk: int, **options
) -> tuple[dict, GenerationEngine]:
    config = model.language_model.generation_config
    width = max(r[4] for r in requests_)
    engine = GenerationEngine(model, rows, width, **{"with_logprobs": True, **options})
    batches = [
        RequestBatch(
            list(range(start, start + len(part))),
            [Search.from_kwargs(_kwargs(processor, r), config) for r in part],
            **_inputs(processor, images, part),
        )
        for start in range(0, len(requests_), chunk)
        if (part := requests_[start : start + chunk])
    ]
    answers = {}
    for finished in engine.run(batches):
        for answer in finished:
            assert answer.key not in answers
            answers[answer.key] = answer
    assert sorted(answers) == list(range(len(requests_)))
    return answers, engine


def _assert_same(answer, alone: Generation) -> None:
    assert answer.token_ids == alone.token_ids
    assert answer.token_logprobs == pytest.approx(alone.token_logprobs, abs=1e-5)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    mix=st.lists(requests(), min_size=1, max_size=7),
    slots=st.integers(1, 3),
    chunk=st.integers(1, 3),
)
def test_every_answer_equals_generate_on_the_request_alone(
    model, processor, images, alone, mix, slots, chunk
) -> None:
    """Random mixes: images, tasks with and without n-gram blocking, prompt lengths, budgets, min_new_tokens,
    greedy and beam-3 requests in one running batch of fewer slots than requests (rows leave and join),
    requests encoded several at a time (questions about one image share its encoding)."""
    width = max(r[4] for r in mix)
    answers, engine = _engine_run(model, processor, images, mix, slots * width, chunk)
    for key, request in enumerate(mix):
        _assert_same(answers[key], alone[id(model)](request))
    assert engine.stats.requests == len(mix)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mix=st.lists(requests(), min_size=2, max_size=7), slots=st.integers(1, 2))
def test_answers_that_end_at_eos_equal_generate_alone(
    eos_model, processor, images, alone, mix, slots
) -> None:
    """The same with answers ending at EOS before their budgets (greedy rows and beam groups leave early)."""
    width = max(r[4] for r in mix)
    answers, _ = _engine_run(eos_model, processor, images, mix, slots * width, chunk=1)
    for key, request in enumerate(mix):
        _assert_same(answers[key], alone[id(eos_model)](request))


def test_rows_leave_when_they_finish_and_queued_requests_take_them(eos_model, processor, images) -> None:
    """6 greedy requests through 2 slots: 4 join rows that others left, answers that end at EOS leave before
    their budget, every step computes only running rows, and each request ran the steps it needs alone."""
    mix = [
        (i % 4, ("<OD>", "<CAPTION>", "<VQA>")[i % 3], 0 if i % 3 == 2 else None, 24, 1, 0) for i in range(6)
    ]
    answers, engine = _engine_run(eos_model, processor, images, mix, rows=2, chunk=1)
    lengths = []
    for key, request in enumerate(mix):
        alone = _alone(eos_model, processor, images, request)
        _assert_same(answers[key], alone)
        assert answers[key].steps == len(alone.token_ids)  # greedy: one step per token
        lengths.append(len(alone.token_ids))
    assert min(lengths) < 24 and len(set(lengths)) > 2, lengths  # rows left at different steps, some at EOS
    assert engine.stats.joined_late == 4
    assert engine.stats.rows_computed == engine.stats.rows_live == sum(lengths)
    assert engine.stats.padding_share == 0.0


def test_beams_stay_together_and_spare_rows_count_as_padding(model, processor, images) -> None:
    mix = [(0, "<CAPTION>", None, 12, 3, 0), (1, "<OD>", None, 9, 1, 0), (2, "<CAPTION>", None, 14, 3, 0)]
    answers, engine = _engine_run(model, processor, images, mix, rows=6, chunk=3)
    for key, request in enumerate(mix):
        _assert_same(answers[key], _alone(model, processor, images, request))
    # The greedy request fills one row of its 3-row slot: two rows of padding per step it ran.
    assert engine.stats.rows_computed - engine.stats.rows_live == 2 * answers[1].steps


def test_no_repeat_ngram_blocking_changes_answers_and_the_engine_follows(model, processor, images) -> None:
    """The random model repeats itself, so n-gram blocking decides tokens: the comparison above can fail."""
    changed = 0
    for beams in (1, 3):
        mix = [(i, "<CAPTION>", None, 24, beams, 0) for i in range(4)]
        blocked, _ = _engine_run(model, processor, images, mix, rows=2 * beams, chunk=2)
        for key, request in enumerate(mix):
            alone = _alone(model, processor, images, request)
            _assert_same(blocked[key], alone)
            kwargs = {**_kwargs(processor, request), "no_repeat_ngram_size": 0}
            free = generate_batch(model, processor, _inputs(processor, images, [request]), kwargs)[0]
            changed += free.token_ids != alone.token_ids
    assert changed > 0


@pytest.mark.parametrize(
    "config",
    [{"early_stopping": True}, {"early_stopping": "never", "length_penalty": 2.0}, {"length_penalty": 0.5},
     {"forced_bos_token_id": 0}, {"min_length": 6}, {"forced_eos_token_id": None},
     {"no_repeat_ngram_size": 3}],
    ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()),
)  # fmt: skip
def test_the_models_generation_config_is_followed(model, processor, images, config, monkeypatch) -> None:
    generation_config = model.language_model.generation_config
    for name, value in config.items():
        monkeypatch.setattr(generation_config, name, value)
    mix = [(0, "<CAPTION>", None, 15, 3, 0), (1, "<OD>", None, 20, 3, 0), (2, "<VQA>", 1, 12, 1, 0),
           (3, "<OD>", None, 7, 3, 0)]  # fmt: skip
    answers, _ = _engine_run(model, processor, images, mix, rows=6, chunk=2)
    for key, request in enumerate(mix):
        _assert_same(answers[key], _alone(model, processor, images, request))


def test_generate_kwargs_win_over_the_generation_config_even_when_zero(model, monkeypatch) -> None:
    config = model.language_model.generation_config
    monkeypatch.setattr(config, "no_repeat_ngram_size", 3)
    monkeypatch.setattr(config, "num_beams", 3)
    assert Search.from_kwargs({"max_new_tokens": 5}, config) == Search(5, 3, 3)
    assert Search.from_kwargs(
        {"max_new_tokens": 5, "no_repeat_ngram_size": 0, "num_beams": 1}, config
    ) == Search(5)


def test_generate_dispatches_on_the_engine_and_both_give_the_same_scored_results(
    model, processor, images, tmp_path
) -> None:
    samples = []
    for i, image in enumerate(images * 2):
        path = tmp_path / f"{i}.png"
        image.save(path)
        samples.append(EvalSample(str(path), SIZE, None, None, str(path)))
    base = GenerationSettings(batch_size=3, num_beams=3, max_new_tokens=20, num_workers=0, progress=False)
    continuous = generate(model, processor, "<OD>", samples, base, with_logprobs=True)
    batched = generate(model, processor, "<OD>", samples, replace(base, engine="batched"), with_logprobs=True)
    boxes = 0
    for ours, theirs in zip(continuous, batched, strict=True):
        # The batched path pads a batch's shorter answers; the tokens before the padding are the same.
        assert theirs.token_ids[: len(ours.token_ids)] == ours.token_ids
        assert set(theirs.token_ids[len(ours.token_ids) :]) <= {processor.tokenizer.pad_token_id}
        a, b = (scored_result("<OD>", g, SIZE, processor) for g in (ours, theirs))
        assert a.result["bboxes"] == b.result["bboxes"] and a.result["labels"] == b.result["labels"]
        assert a.result["scores"] == pytest.approx(b.result["scores"], abs=1e-5)
        assert a.score == pytest.approx(b.score, abs=1e-5)
        boxes += len(a.result["bboxes"])
    assert boxes > 0, "no box: the score comparison compared nothing"
    with pytest.raises(ValueError, match="unknown generation engine"):
        generate(model, processor, "<OD>", samples, replace(base, engine="paged"))


def test_without_logprobs_the_tokens_are_the_same(model, processor, images) -> None:
    mix = [(0, "<CAPTION>", None, 10, 3, 0), (1, "<OD>", None, 6, 3, 0)]
    with_scores, _ = _engine_run(model, processor, images, mix, rows=3, chunk=1)
    without, _ = _engine_run(model, processor, images, mix, rows=3, chunk=1, with_logprobs=False)
    for key in with_scores:
        assert without[key].token_ids == with_scores[key].token_ids and without[key].token_logprobs is None


def test_bf16_autocast_runs_the_caches_in_bf16(model, processor, images) -> None:
    mix = [(0, "<CAPTION>", None, 8, 3, 0), (1, "<OD>", None, 5, 3, 0)]
    answers, engine = _engine_run(model, processor, images, mix, rows=3, chunk=2, bf16=True)
    assert engine.self_k[0].dtype == engine.cross_k[0].dtype == torch.bfloat16
    eos = model.language_model.generation_config.eos_token_id
    for key, request in enumerate(mix):  # budgets and the forced EOS hold in bf16 too
        assert 1 <= len(answers[key].token_ids) <= request[3] and answers[key].token_ids[-1] == eos


def test_what_the_engine_does_not_implement_is_refused(model, monkeypatch) -> None:
    config = model.language_model.generation_config
    with pytest.raises(ValueError, match="sampling"):
        Search.from_kwargs({"max_new_tokens": 4, "do_sample": True}, config)
    with pytest.raises(ValueError, match="top_k"):
        Search.from_kwargs({"max_new_tokens": 4, "top_k": 5}, config)
    monkeypatch.setattr(config, "repetition_penalty", 1.3)
    with pytest.raises(ValueError, match="repetition_penalty"):
        GenerationEngine(model, 3, 3)


def test_the_engine_option_of_predict_and_evaluate(monkeypatch) -> None:
    import argparse

    from f2lightning.evaluation import commands as evaluate_commands
    from f2lightning.evaluation import runner
    from f2lightning.inference.commands import add_generation_arguments, generation_settings

    parser = argparse.ArgumentParser()
    add_generation_arguments(parser)
    assert generation_settings(parser.parse_args(["--checkpoint", "c"])).engine == "continuous"
    assert (
        generation_settings(parser.parse_args(["--checkpoint", "c", "--engine", "batched"])).engine
        == "batched"
    )
    seen = {}
    monkeypatch.setattr(runner, "evaluate", lambda *args, **kwargs: seen.update(kwargs) or [])
    monkeypatch.setattr("f2lightning.evaluation.report.to_markdown", lambda *args, **kwargs: "")
    subparsers = argparse.ArgumentParser().add_subparsers()
    evaluate_commands.register_cli(subparsers)
    args = subparsers.choices["evaluate"].parse_args(
        ["-c", "x.yaml", "--checkpoint", "c", "--engine", "batched"]
    )
    args.func(args)
    assert seen["overrides"]["engine"] == "batched"


def test_the_compiled_static_step_gives_the_eager_answers(model, processor, images) -> None:
    mix = [
        (i % 4, "<CAPTION>" if i % 2 else "<OD>", None, budget, 3, 0) for i, budget in enumerate([5, 14, 9])
    ]
    eager, _ = _engine_run(model, processor, images, mix, rows=6, chunk=2)
    compiled, engine = _engine_run(model, processor, images, mix, rows=6, chunk=2, compile_step=True)
    for key in eager:
        _assert_same(compiled[key], Generation("", eager[key].token_ids, eager[key].token_logprobs))
    assert engine.stats.rows_computed == engine.stats.steps * 6  # static shapes: every slot, every step
