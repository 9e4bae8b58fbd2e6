"""`f2lightning predict`: answers equal evaluate's generation, batches equal one-by-one, scores follow the
log-probabilities, an interrupted run resumes without losing or repeating an image, bad images are counted."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from f2lightning.cli import main
from f2lightning.data.schema import Record
from f2lightning.data.skips import SkipReport
from f2lightning.evaluation.samples import EvalSample
from f2lightning.inference.generation import GenerationSettings, generate
from f2lightning.inference.loading import load_model
from f2lightning.inference.predict import build_requests, collect_images, predict
from f2lightning.inference.results import box_scores
from tests.helpers.weights import tiny_checkpoint

SIZE = (64, 48)
FAST = GenerationSettings(batch_size=3, num_beams=2, max_new_tokens=24, num_workers=0, progress=False)
COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("checkpoint"))


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return load_model(checkpoint, image_size=64)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    for i, color in enumerate(COLORS):
        image = Image.new("RGB", SIZE, color)
        image.paste((255, 255, 255), (8 * i, 4, 8 * i + 20, 30))
        image.save(folder / f"{i:02d}.png")
    return folder


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _requests(images: Path, tasks=("<OD>",), text=None):
    return build_requests(collect_images([images], SkipReport()), tasks, text)


def test_predict_answers_what_evaluate_generates_with_scores_and_records(loaded, images, tmp_path) -> None:
    model, processor = loaded
    requests = _requests(images)
    summary = predict(model, processor, requests, tmp_path / "out.jsonl", FAST, source="round0")
    lines = {line["image"]: line for line in _lines(tmp_path / "out.jsonl")}
    assert summary.written == len(requests) == len(lines) == 5
    samples = [EvalSample(r.image, r.image_size, None, None, r.image) for r in requests]
    reference = generate(model, processor, "<OD>", samples, FAST, with_logprobs=True)
    boxes_seen = 0
    for sample, generation in zip(samples, reference, strict=True):
        line = lines[sample.image]
        assert line["text"] == generation.text
        result = line["result"]["<OD>"]
        assert (
            result["bboxes"]
            == processor.post_process(torch.tensor([generation.token_ids]), ["<OD>"], [SIZE])[0]["bboxes"]
        )
        if len(result["bboxes"]) == len(box_scores(generation, processor)):
            assert result["scores"] == pytest.approx(box_scores(generation, processor), abs=1e-9)
        assert all(0 < s <= 1 for s in result["scores"]) and 0 < line["score"] <= 1
        record = Record.from_json(line["record"])  # a valid record of our schema
        assert all(r.source == "round0" and r.score in result["scores"] for r in record.regions)
        boxes_seen += len(result["bboxes"])
    assert boxes_seen > 0, "the random model wrote no box: the score checks above checked nothing"


def _split_scores(value, scores: list[float]):
    """`value` with every `score` / `scores` entry set to None, their numbers appended to `scores`: batched
    float32 matmuls round differently in the last bits, so scores compare approximately and the rest exactly."""
    if isinstance(value, list):
        return [_split_scores(v, scores) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, item in value.items():
        if key in ("score", "scores"):
            scores += item if isinstance(item, list) else [item]
            item = None
        out[key] = _split_scores(item, scores)
    return out


def test_batched_prediction_equals_one_by_one(loaded, images, tmp_path) -> None:
    model, processor = loaded
    requests = _requests(images, ("<OD>", "<CAPTION>"))
    predict(model, processor, requests, tmp_path / "batched.jsonl", replace(FAST, batch_size=4))
    predict(model, processor, requests, tmp_path / "single.jsonl", replace(FAST, batch_size=1))
    batched = {line["key"]: line for line in _lines(tmp_path / "batched.jsonl")}
    single = {line["key"]: line for line in _lines(tmp_path / "single.jsonl")}
    assert batched.keys() == single.keys() and len(batched) == 10
    for key, line in batched.items():
        batched_scores, single_scores = [], []
        assert _split_scores(line, batched_scores) == _split_scores(single[key], single_scores)
        assert batched_scores == pytest.approx(single_scores, rel=1e-5)


def test_box_scores_are_the_geometric_mean_probability_of_each_box_under_teacher_forcing(
    loaded, images
) -> None:
    """Independent of generate's own scores: re-score the generated tokens with one teacher-forced pass."""
    model, processor = loaded
    greedy = replace(FAST, num_beams=1, max_new_tokens=40)
    requests = _requests(images)
    generations = generate(model, processor, "<OD>", requests, greedy, with_logprobs=True)
    # The image whose answer holds the most boxes: the ranking check needs at least two.
    request, generation = max(
        zip(requests, generations), key=lambda pair: len(box_scores(pair[1], processor))
    )
    batch = processor([Image.open(request.image)], ["<OD>"])
    decoder = torch.tensor([[model.config.text.decoder_start_token_id, *generation.token_ids]])
    with torch.no_grad():
        logits = model(
            batch["pixel_values"],
            batch["input_ids"],
            batch["attention_mask"],
            decoder_input_ids=decoder[:, :-1],
        ).logits
    logprobs = logits.float().log_softmax(-1)[0].gather(-1, decoder[0, 1:, None])[:, 0]
    # The end token is forced at the length limit (log-probability 0 under the processed distribution) and never
    # part of a box; every other token's log-probability is the model's own.
    kept = decoder[0, 1:] != processor.tokenizer.eos_token_id
    assert torch.allclose(logprobs[kept], torch.tensor(generation.token_logprobs)[kept], atol=1e-4)
    scores = box_scores(generation, processor)
    assert len(scores) >= 2, "fewer than two boxes generated: nothing to rank"
    order = sorted(range(len(scores)), key=scores.__getitem__)
    # Rescoring each box from the teacher-forced log-probabilities ranks the boxes the same way.
    rescored = box_scores(replace(generation, token_logprobs=logprobs.tolist()), processor)
    assert sorted(range(len(rescored)), key=rescored.__getitem__) == order
    assert all(0 < s <= 1 for s in scores)
    assert rescored == pytest.approx(scores, abs=1e-4) and not math.isclose(min(scores), max(scores))


def test_a_rerun_after_an_interruption_skips_finished_images_and_duplicates_none(
    loaded, images, tmp_path
) -> None:
    model, processor = loaded
    requests = _requests(images)
    out = tmp_path / "out.jsonl"
    predict(model, processor, requests, tmp_path / "whole.jsonl", FAST)
    predict(model, processor, requests[:2], out, FAST)
    with open(out, "a") as f:  # a kill in the middle of writing the third line
        f.write('{"key": "half a li')
    summary = predict(model, processor, requests, out, FAST)
    assert (summary.already_done, summary.written) == (2, 3)
    keys = [line["key"] for line in _lines(out)]
    assert (
        sorted(keys) == sorted(line["key"] for line in _lines(tmp_path / "whole.jsonl"))
        and len(set(keys)) == 5
    )
    assert predict(model, processor, requests, out, FAST).written == 0


def test_the_cli_predicts_a_folder_counts_bad_images_and_draws_pictures(
    checkpoint, images, tmp_path, capsys
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for image in sorted(images.iterdir())[:2]:
        (folder / image.name).write_bytes(image.read_bytes())
    (folder / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out.jsonl"
    args = ["predict", str(folder), "--task", "<OD>", "--task", "caption", "--checkpoint", str(checkpoint),
            "-o", str(out), "--max-new-tokens", "12", "--num-beams", "1", "--num-workers", "0",
            "--no-progress", "--pictures", str(tmp_path / "pictures")]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "wrote 4 prediction(s)" in printed and "undecodable_image: 1" in printed
    assert {line["task"] for line in _lines(out)} == {"<OD>", "<CAPTION>"}
    assert len(list((tmp_path / "pictures").glob("*.png"))) == 4


def test_the_cli_refuses_a_task_without_its_input_and_an_input_that_names_nothing(
    checkpoint, images, tmp_path, capsys
) -> None:
    common = ["--checkpoint", str(checkpoint), "-o", str(tmp_path / "out.jsonl")]
    assert main(["predict", str(images), "--task", "<CAPTION_TO_PHRASE_GROUNDING>", *common]) == 2
    assert "needs a text input (--text)" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "nothing*.png"), "--task", "<OD>", *common]) == 2
    assert "no such image file, folder, glob match or record JSONL" in capsys.readouterr().err
    assert main(["predict", str(images), "--task", "<NOT_A_TASK>", *common]) == 2
    assert "<NOT_A_TASK>" in capsys.readouterr().err


def test_a_prompt_longer_than_the_processor_keeps_is_refused_not_cut(loaded, images, tmp_path) -> None:
    model, processor = loaded
    caption = " ".join(["a dog and a man in a red car"] * 60)  # far beyond 256 tokens
    requests = _requests(images, ("<CAPTION_TO_PHRASE_GROUNDING>",), caption)
    with pytest.raises(ValueError, match=r"prompt is .* tokens, more than max_prompt_length 256"):
        predict(model, processor, requests, tmp_path / "out.jsonl", FAST)
