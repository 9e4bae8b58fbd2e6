"""`f2lightning evaluate`: every shipped benchmark config end to end on tiny files in the benchmark's public
format, per-box scores from token log-probabilities, and batched generation equal to one-by-one."""

from __future__ import annotations

import argparse
import json
import math
import pickle
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import LogitsProcessor, LogitsProcessorList

from f2lightning.evaluation.benchmarks import BENCHMARKS, PAPER_ROWS
from f2lightning.evaluation.commands import register_cli
from f2lightning.evaluation.runner import load_config, load_samples, predictions
from f2lightning.evaluation.samples import EvalSample
from f2lightning.inference.generation import GenerationSettings, generate, length_aware_batches
from f2lightning.inference.loading import load_model
from f2lightning.model import Florence2
from tests.helpers.weights import tiny_checkpoint

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "eval"
IMAGE = (64, 48)
FAST = GenerationSettings(batch_size=4, num_beams=3, max_new_tokens=8, num_workers=0, progress=False)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models are latency-bound: on a loaded 2-core machine a second OpenMP thread mostly spins (measured
    40x slower generation with 2 threads than with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------- model
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("checkpoint"))


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return load_model(checkpoint, image_size=64)


# ------------------------------------------------------------------------------------------- data
def _image(root: Path, relative: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", IMAGE, (120, 30, 30)).save(path)


def _json(root: Path, relative: str, data) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def _refs(root: Path, relative: str, splits: list[str]) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    refs = [
        {"ref_id": i, "ann_id": 70 + i % 2, "image_id": 7, "split": split, "category_id": 1,
         "sentences": [{"sent": f"the {'left' if i % 2 == 0 else 'right'} man", "sent_id": i}]}
        for i, split in enumerate(splits)
    ]  # fmt: skip
    path.write_bytes(pickle.dumps(refs, protocol=2))
    _json(root, str(Path(relative).parent / "instances.json"), {
        "images": [{"id": 7, "file_name": "COCO_train2014_000000000007.jpg", "width": 64, "height": 48}],
        "categories": [{"id": 1, "name": "person"}],
        "annotations": [
            {"id": 70, "image_id": 7, "category_id": 1, "iscrowd": 0, "area": 200, "bbox": [1, 2, 10, 20],
             "segmentation": [[1, 2, 11, 2, 11, 22, 1, 22]]},
            {"id": 71, "image_id": 7, "category_id": 1, "iscrowd": 0, "area": 200, "bbox": [30, 2, 10, 20],
             "segmentation": [[30, 2, 40, 2, 40, 22, 30, 22]]},
        ],
    })  # fmt: skip


FLICKR_XML = """<annotation><filename>1000.jpg</filename>
<size><width>64</width><height>48</height><depth>3</depth></size>
<object><name>18</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>30</xmax><ymax>40</ymax></bndbox></object>
<object><name>19</name><bndbox><xmin>35</xmin><ymin>5</ymin><xmax>60</xmax><ymax>45</ymax></bndbox></object>
</annotation>"""


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """Every benchmark's files, at the paths the shipped configs name, in the public formats."""
    root = tmp_path_factory.mktemp("data")
    sentence = {"raw": "A man in a red car.", "tokens": ["a", "man"]}
    _image(root, "coco/val2014/COCO_val2014_000000000042.jpg")
    _json(root, "coco/dataset_coco.json", {"dataset": "coco", "images": [
        {"filepath": "val2014", "filename": "COCO_val2014_000000000042.jpg", "split": split, "cocoid": 42 + i,
         "sentences": [sentence, {"raw": "A dog."}]}
        for i, split in enumerate(["test", "test", "train"])
    ]})  # fmt: skip
    _image(root, "instructions/invoice.png")
    (root / "instructions/val.jsonl").write_text(json.dumps({"image": "invoice.png", "width": 64, "height": 48,
        "instructions": [{"prompt": "Total as JSON?", "target": '{"total": "12.50"}'}]}) + "\n")  # fmt: skip
    _image(root, "nocaps/validation/abc.jpg")
    _json(root, "nocaps/nocaps_val_4500_captions.json", {
        "images": [{"id": 0, "file_name": "abc.jpg", "width": 64, "height": 48}],
        "annotations": [{"id": 1, "image_id": 0, "caption": "A red car."}, {"id": 2, "image_id": 0, "caption": "A car."}],
    })  # fmt: skip
    _image(root, "textcaps/train/tc1.jpg")
    _json(root, "textcaps/TextCaps_0.1_val.json", {"data": [
        {"image_id": "tc1", "image_width": 64, "image_height": 48, "image_path": "train/tc1.jpg", "caption_str": c}
        for c in ["A sign that says STOP.", "A red sign."]
    ]})  # fmt: skip
    _image(root, "coco/val2017/000001.jpg")
    _image(root, "coco/val2017/000002.jpg")
    _json(root, "coco/annotations/instances_val2017.json", {
        "images": [{"id": i, "file_name": f"00000{i}.jpg", "width": 64, "height": 48} for i in (1, 2)],
        "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 18, "iscrowd": 0, "area": 150.0, "bbox": [2, 3, 20, 10]},
            {"id": 11, "image_id": 1, "category_id": 1, "iscrowd": 1, "area": 600.0, "bbox": [30, 20, 30, 20]},
        ],
    })  # fmt: skip
    (root / "flickr30k/Sentences").mkdir(parents=True)
    (root / "flickr30k/Annotations").mkdir(parents=True)
    (root / "flickr30k/Annotations/1000.xml").write_text(FLICKR_XML)
    (root / "flickr30k/Sentences/1000.txt").write_text(
        "[/EN#18/people A man] drives [/EN#19/vehicles a red car] .\n[/EN#19/vehicles The car] is red .\n"
    )
    (root / "flickr30k/test.txt").write_text("1000\n")
    _image(root, "flickr30k/flickr30k-images/1000.jpg")
    _image(root, "coco/train2014/COCO_train2014_000000000007.jpg")
    _refs(root, "refcoco/refs(unc).p", ["val", "testA", "testB", "train"])
    _refs(root, "refcoco+/refs(unc).p", ["val", "testA", "testB"])
    _refs(root, "refcocog/refs(umd).p", ["val", "test"])
    _json(root, "vqav2/v2_OpenEnded_mscoco_val2014_questions.json", {"data_subtype": "val2014", "questions": [
        {"image_id": 42, "question": "What color is the car?", "question_id": 420},
        {"image_id": 42, "question": "How many?", "question_id": 421},
    ]})  # fmt: skip
    _json(root, "vqav2/v2_mscoco_val2014_annotations.json", {"annotations": [
        {"question_id": 420, "image_id": 42, "answers": [{"answer": "red", "answer_id": 1}] * 10},
        {"question_id": 421, "image_id": 42, "answers": [{"answer": "2", "answer_id": 1}] * 10},
    ]})  # fmt: skip
    _image(root, "textvqa/train_images/tv1.jpg")
    _json(root, "textvqa/TextVQA_0.5.1_val.json", {"data": [
        {"question": "what brand?", "image_id": "tv1", "image_width": 64, "image_height": 48,
         "answers": ["nike"] * 9 + ["adidas"], "question_id": 1},
    ]})  # fmt: skip
    _image(root, "vizwiz/val/VizWiz_val_00000000.jpg")
    _json(root, "vizwiz/Annotations/val.json", [
        {"image": "VizWiz_val_00000000.jpg", "question": "What is this?", "answerable": 1, "answer_type": "other",
         "answers": [{"answer": "a can", "answer_confidence": "yes"}] * 10},
    ])  # fmt: skip
    # Test splits with private answers (configs/eval/server): questions only, as the servers hand them out.
    _image(root, "coco/test2015/COCO_test2015_000000000077.jpg")
    _image(root, "coco/test2015/COCO_test2015_000000000078.jpg")
    _json(root, "vqav2/v2_OpenEnded_mscoco_test-dev2015_questions.json", {"data_subtype": "test-dev2015", "questions": [
        {"image_id": 78, "question": "Is it raining?", "question_id": 780},
        {"image_id": 77, "question": "What color is the car?", "question_id": 770},
        {"image_id": 78, "question": "How many people?", "question_id": 781},
    ]})  # fmt: skip
    _image(root, "textvqa/test_images/tt1.jpg")
    _json(root, "textvqa/TextVQA_0.5.1_test.json", {"data": [
        {"question": "what brand?", "image_id": "tt1", "image_width": 64, "image_height": 48, "question_id": 5},
    ]})  # fmt: skip
    _image(root, "vizwiz/test/VizWiz_test_00000000.jpg")
    _image(root, "vizwiz/test/VizWiz_test_00000001.jpg")
    _json(root, "vizwiz/Annotations/test.json", [
        {"image": f"VizWiz_test_0000000{i}.jpg", "question": "What is this?"} for i in (1, 0)
    ])  # fmt: skip
    return root


# ------------------------------------------------------------------------------------------- configs
def test_one_config_per_benchmark() -> None:
    configs = {load_config(path).benchmark.name: path for path in sorted(CONFIGS.glob("*.yaml"))}
    assert set(configs) == set(BENCHMARKS)
    assert len(configs) == len(list(CONFIGS.glob("*.yaml")))


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_configs_read_their_public_files(name, data_root) -> None:
    config = next(c for c in map(load_config, CONFIGS.glob("*.yaml")) if c.benchmark.name == name)
    for split in config.splits.values():
        samples, report = load_samples(config, split, data_root)
        assert samples, (name, split, str(report))
        assert all(Path(s.image).is_file() for s in samples)


def test_loaders_keep_the_protocols_ground_truth(data_root) -> None:
    detection = load_config(CONFIGS / "coco_detection.yaml")
    samples, _ = load_samples(detection, "val2017", data_root)
    # COCOeval counts false positives on unannotated images and ignores (not drops) crowd regions.
    assert [s.key for s in samples] == ["1", "2"]
    assert samples[0].target["iscrowd"] == [0, 1] and samples[0].target["bboxes"][0] == [2, 3, 22, 13]
    refcoco = load_config(CONFIGS / "refcoco.yaml")
    assert [len(load_samples(refcoco, split, data_root)[0]) for split in ("val", "testA", "testB")] == [
        1,
        1,
        1,
    ]
    flickr, _ = load_samples(load_config(CONFIGS / "flickr30k.yaml"), "test", data_root)
    assert [s.text_input for s in flickr] == ["A man drives a red car .", "The car is red ."]
    vqa, _ = load_samples(load_config(CONFIGS / "vqav2.yaml"), "val2014", data_root)
    assert vqa[0].target == ["red"] * 10


# ------------------------------------------------------------------------------------------- end to end
def test_evaluate_command_writes_the_paper_table(checkpoint, data_root, tmp_path, capsys) -> None:
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers())
    out = tmp_path / "out"
    configs = [arg for path in sorted(CONFIGS.glob("*.yaml")) for arg in ("-c", str(path))]
    args = parser.parse_args([
        "evaluate", *configs, "--checkpoint", str(checkpoint), "--data-root", str(data_root), "--device", "cpu",
        "--image-size", "64", "--batch-size", "4", "--max-new-tokens", "8", "--num-workers", "0", "--no-progress", "-o", str(out),
    ])  # fmt: skip
    args.func(args)
    markdown = (out / "results.md").read_text()
    assert markdown == capsys.readouterr().out.split("wrote ")[0].rstrip("\n") + "\n"
    lines = markdown.splitlines()
    assert lines[0].startswith("| Method | COCO Cap. |") and "| RefCOCO |  |  | RefCOCO+ |" in lines[0]
    assert "| test-dev |" in lines[2] and "| val | test-A | test-B |" in lines[2]
    zero_shot_b = next(line for line in lines if line.startswith(f"| {PAPER_ROWS[0]} |"))
    assert "| 133.0 |" in zero_shot_b and "| 53.9 | 58.4 | 49.7 |" in zero_shot_b
    ours = next(line for line in lines if line.startswith("| **ours"))
    assert "(val2014)" in ours and "(testA)" not in ours  # VQAv2: we score val, the paper test-dev
    report = json.loads((out / "results.json").read_text())
    by_name = {b["name"]: b for b in report["benchmarks"]}
    assert set(by_name) == set(BENCHMARKS)
    refcoco = by_name["refcoco"]["splits"]
    assert [s["column"] for s in refcoco] == ["val", "test-A", "test-B"]
    assert refcoco[1]["paper"][PAPER_ROWS[1]] == 61.6 and 0.0 <= refcoco[1]["score"] <= 100.0
    assert report["settings"]["num_beams"] == 3 and report["settings"]["max_new_tokens"] == 8
    # Captions are tokenized like coco-caption's published scores wherever Java can run its PTBTokenizer.
    assert by_name["coco_caption"]["splits"][0]["details"]["tokenizer"] == (
        "ptb" if shutil.which("java") else "python"
    )
    detection = by_name["coco_detection"]["splits"][0]
    assert detection["num_samples"] == 2 and "map_50" in detection["details"]
    for line in (out / "predictions" / "coco_detection_val2017.jsonl").read_text().splitlines():
        prediction = json.loads(line)["prediction"]
        assert len(prediction["scores"]) == len(prediction["bboxes"])


def test_lightning_checkpoint_with_tokenizer_option(checkpoint, data_root, tmp_path) -> None:
    from f2lightning.evaluation.runner import evaluate

    model = Florence2.from_pretrained(checkpoint)
    ckpt = tmp_path / "last.ckpt"
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "f2lightning": {"model_config": model.config.to_dict()}}, ckpt)
    (result,) = evaluate(
        [CONFIGS / "vqav2.yaml"], ckpt, tokenizer=checkpoint, data_root=data_root, device="cpu", image_size=64,
        overrides={"max_new_tokens": 4, "num_workers": 0, "progress": False},
    )  # fmt: skip
    assert result.splits[0].num_samples == 2


# ------------------------------------------------------------------------------------------- private answers
SERVER_CONFIGS = sorted((CONFIGS / "server").glob("*.yaml"))


def test_server_configs_write_one_answer_per_question_in_the_servers_format(
    checkpoint, data_root, tmp_path
) -> None:
    from f2lightning.evaluation.report import to_markdown
    from f2lightning.evaluation.runner import evaluate

    assert {load_config(p).benchmark.name for p in SERVER_CONFIGS} == {"vqav2", "textvqa", "vizwiz"}
    out = tmp_path / "out"
    results = evaluate(
        SERVER_CONFIGS, checkpoint, data_root=data_root, device="cpu", image_size=64, out_dir=out,
        overrides={"max_new_tokens": 4, "num_workers": 0, "progress": False, "batch_size": 2},
    )  # fmt: skip
    expected_keys = {
        "vqav2": [
            ("question_id", 780),
            ("question_id", 770),
            ("question_id", 781),
        ],  # the questions file's order
        "textvqa": [("question_id", 5)],
        "vizwiz": [("image", "VizWiz_test_00000001.jpg"), ("image", "VizWiz_test_00000000.jpg")],
    }
    for result in results:
        (split,) = result.splits
        assert split.score is None and split.column == "test-dev"
        answers = json.loads(Path(split.answers_file).read_text())
        assert Path(split.answers_file) == out / "answers" / f"{result.benchmark.name}_test-dev.json"
        assert [(k, item[k]) for item in answers for k in item if k != "answer"] == expected_keys[
            result.benchmark.name
        ]
        predicted = [
            json.loads(line)["prediction"]
            for line in (out / "predictions" / f"{result.benchmark.name}_test-dev.jsonl")
            .read_text()
            .splitlines()
        ]
        assert [item["answer"] for item in answers] == predicted and all(
            isinstance(a, str) for a in predicted
        )
    markdown = to_markdown(results)
    assert "answers/vqav2_test-dev.json (to the server)" in markdown
    report = json.loads((out / "results.json").read_text())
    assert [s["score"] for b in report["benchmarks"] for s in b["splits"]] == [None, None, None]


def test_private_answers_need_an_output_folder_before_the_model_loads(data_root) -> None:
    from f2lightning.evaluation.runner import evaluate

    with pytest.raises(ValueError, match=r"answers are private; give an output folder \(-o DIR"):
        evaluate(SERVER_CONFIGS[:1], "no/such/checkpoint", data_root=data_root, device="cpu")


@pytest.mark.parametrize(("questions", "error"), [
    ([{"image": "VizWiz_test_00000009.jpg", "question": "What?"}],
     r"1 of 1 questions show images that cannot be read \(first: .*VizWiz_test_00000009"),
    ([{"image": "VizWiz_test_00000000.jpg", "question": "What?"}, {"image": "VizWiz_test_00000000.jpg"}],
     r"test.json: question 1 is malformed \(KeyError: 'question'\)"),
    ([{"image": "VizWiz_test_00000000.jpg", "question": 7}], r"question 0 is malformed \(AttributeError"),
    ({"questions": []}, "test.json: expected a list of questions, got dict"),
    ("[{", r"test\.json: not valid JSON"),
])  # fmt: skip
def test_a_questions_file_the_server_could_not_score_is_an_error_naming_it(
    tmp_path, questions, error
) -> None:
    config = load_config(CONFIGS / "server" / "vizwiz_test.yaml")
    _image(tmp_path, "vizwiz/test/VizWiz_test_00000000.jpg")
    path = tmp_path / "vizwiz/Annotations/test.json"
    path.parent.mkdir(parents=True)
    path.write_text(questions if isinstance(questions, str) else json.dumps(questions))
    with pytest.raises(ValueError, match=error):
        load_samples(config, "test", tmp_path)


def test_a_vqav2_questions_file_without_questions_is_an_error_naming_it(tmp_path) -> None:
    config = load_config(CONFIGS / "server" / "vqav2_test_dev.yaml")
    _json(tmp_path, "vqav2/v2_OpenEnded_mscoco_test-dev2015_questions.json", {"data_subtype": "test-dev2015"})
    with pytest.raises(
        ValueError, match=r"test-dev2015_questions\.json: expected a JSON object with `questions`"
    ):
        load_samples(config, "test-dev", tmp_path)


def test_a_caption_tokenizer_typo_fails_when_the_config_is_read(tmp_path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text((CONFIGS / "coco_caption.yaml").read_text() + "metric: {tokenizer: ptbb}\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: metric: caption tokenizer must be auto, ptb or python"):
        load_config(config)


@pytest.mark.parametrize(("data", "error"), [
    ("{format: vqav2-questions, questions: q.json}", "holds VQA questions, not refcoco"),
    ("{refs: refs.p}", "`data` must be a mapping with a `format`"),
    ("refcoco/refs.p", "`data` must be a mapping with a `format`"),
])  # fmt: skip
def test_a_config_with_unusable_data_fails_when_read(tmp_path, data, error) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(f"benchmark: refcoco\ndata: {data}\nsplits: [val]\n")
    with pytest.raises(ValueError, match=error):
        load_config(config)


# ------------------------------------------------------------------------------------------- generation
def _rec_samples(data_root: Path) -> list[EvalSample]:
    image = str(data_root / "coco/train2014/COCO_train2014_000000000007.jpg")
    expressions = ["man", "the red car on the left", "a dog", "the man in a red car driving a dog", "car"]
    return [EvalSample(image, IMAGE, text, None, str(i)) for i, text in enumerate(expressions)]


def test_batched_generation_equals_one_by_one(loaded, data_root) -> None:
    model, processor = loaded
    samples = _rec_samples(data_root)
    task = "<REFERRING_EXPRESSION_COMPREHENSION>"
    batched = generate(model, processor, task, samples, FAST, with_logprobs=True)
    single = generate(
        model, processor, task, samples, GenerationSettings(**{**FAST.__dict__, "batch_size": 1}), True
    )
    assert [g.text for g in batched] == [g.text for g in single]
    assert len({g.text for g in batched}) > 1  # each expression gets its own answer: the check is not vacuous
    for a, b in zip(batched, single):
        assert a.token_ids == b.token_ids
        torch.testing.assert_close(
            torch.tensor(a.token_logprobs), torch.tensor(b.token_logprobs), atol=1e-4, rtol=0
        )


def test_length_aware_batches_group_similar_prompts() -> None:
    batches = length_aware_batches([5, 1, 9, 1, 5, 2], batch_size=2)
    assert batches == [[1, 3], [5, 0], [4, 2]]
    assert sorted(i for b in batches for i in b) == list(range(6))
    # Questions about one image stay together (one encoding per batch); images go by their longest prompt.
    batches = length_aware_batches([5, 1, 9, 1, 5, 2], batch_size=2, images=["a", "b", "a", "c", "b", "c"])
    assert batches == [[3, 5], [1, 4], [0, 2]]


def test_token_logprobs_are_the_models_teacher_forced_logprobs(loaded, data_root) -> None:
    """Beam search's per-token scores (through beam_indices) equal a plain forward pass over the chosen beam."""
    model, processor = loaded
    samples = [replace(s, text_input=None) for s in _rec_samples(data_root)[:2]]
    generations = generate(model, processor, "<OD>", samples, FAST, with_logprobs=True)
    batch = processor([Image.open(samples[0].image)] * 2, ["<OD>"] * 2)
    special = {
        processor.tokenizer.pad_token_id,
        processor.tokenizer.bos_token_id,
        processor.tokenizer.eos_token_id,
    }
    for row, generation in enumerate(generations):
        ids = torch.tensor([[model.config.text.decoder_start_token_id, *generation.token_ids]])
        with torch.no_grad():
            logits = model(batch["pixel_values"][row : row + 1], batch["input_ids"][row : row + 1],
                           decoder_input_ids=ids[:, :-1]).logits  # fmt: skip
        expected = logits.log_softmax(-1)[0].gather(-1, ids[0, 1:, None])[:, 0]
        checked = [i for i, t in enumerate(generation.token_ids) if t not in special]
        assert checked
        torch.testing.assert_close(
            torch.tensor(generation.token_logprobs)[checked], expected[checked], atol=1e-4, rtol=0
        )


class _ScriptedLogits(LogitsProcessor):
    """Makes step t put probability `probs[t]` on `tokens[t]` and spread the rest evenly: the generated text
    and each token's likelihood are then known exactly."""

    def __init__(self, tokens: list[int], probs: list[float], vocab_size: int) -> None:
        self.tokens, self.probs, self.vocab_size = tokens, probs, vocab_size

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        step = min(input_ids.shape[1] - 1, len(self.tokens) - 1)
        p = self.probs[step]
        out = torch.full_like(scores, math.log((1 - p) / (self.vocab_size - 1)))
        out[:, self.tokens[step]] = math.log(p)
        return out


def test_detection_box_scores_follow_the_generated_likelihood(loaded, data_root, monkeypatch) -> None:
    model, processor = loaded
    tokenizer = processor.tokenizer
    text = "dog<loc_10><loc_20><loc_300><loc_400>man<loc_500><loc_100><loc_900><loc_600>"
    tokens = tokenizer(text)["input_ids"]  # <s> ... </s>
    dog_end, man_box = (tokens.index(tokenizer.convert_tokens_to_ids(t)) for t in ("<loc_400>", "<loc_500>"))
    # Every token of "dog" and its box has probability 0.9, every token of "man" and its box 0.4.
    probs = [0.9 if i <= dog_end else 0.4 for i in range(len(tokens))]
    probs[0] = probs[-1] = 0.999  # <s>, </s>
    scripted = _ScriptedLogits(tokens, probs, model.config.text.vocab_size)
    original = processor.generation_kwargs
    monkeypatch.setattr(
        processor, "generation_kwargs",
        lambda task, num_beams=3: {**original(task, num_beams), "logits_processor": LogitsProcessorList([scripted])},
    )  # fmt: skip
    samples = [EvalSample(str(data_root / "coco/val2017/000001.jpg"), IMAGE, None, None, "1")]
    # A scripted logits processor is a transformers `generate` argument: the batched path takes it, the continuous
    # engine (whose scores equal it, tests/test_generation_engine.py) refuses what it does not implement.
    settings = GenerationSettings(
        batch_size=1,
        num_beams=3,
        max_new_tokens=len(tokens) + 2,
        num_workers=0,
        progress=False,
        engine="batched",
    )
    generations = generate(model, processor, "<OD>", samples, settings, with_logprobs=True)
    (pred,), fallbacks = predictions(BENCHMARKS["coco_detection"], generations, samples, processor)
    assert fallbacks == 0 and pred["labels"] == ["dog", "man"]
    assert man_box > dog_end + 1  # the label "man" sits between the boxes
    dog, man = pred["scores"]
    assert dog == pytest.approx(0.9, rel=1e-4) and man == pytest.approx(0.4, rel=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_generation_scores_boxes(checkpoint, data_root) -> None:
    model, processor = load_model(checkpoint, device="cuda", image_size=64)
    samples = [replace(s, text_input=None) for s in _rec_samples(data_root)[:3]]
    settings = replace(FAST, device="cuda", bf16=True)
    generations = generate(model, processor, "<OD>", samples, settings, with_logprobs=True)
    assert all(
        g.token_logprobs is not None and all(math.isfinite(v) for v in g.token_logprobs) for g in generations
    )
    preds, _ = predictions(BENCHMARKS["coco_detection"], generations, samples, processor)
    assert all(len(p["scores"]) == len(p["bboxes"]) for p in preds)
