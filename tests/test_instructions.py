"""Free-form instructions: the `<INSTRUCTION>` task (prompt and answer verbatim), its metrics (exact match,
normalised edit distance, ANLS) in validation and in `f2lightning evaluate`, on hand-computed examples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from f2lightning.data.schema import Instruction, Record
from f2lightning.evaluation.benchmarks import instruction_score
from f2lightning.evaluation.runner import evaluate, load_config, load_samples
from f2lightning.evaluation.text_similarity import (
    TextSimilarity,
    normalized_edit_distance,
    normalized_levenshtein_similarity,
)
from f2lightning.processor import Florence2Processor
from f2lightning.tasks import get_task
from f2lightning.tokenizer import train_tokenizer
from f2lightning.training.quality import TEXT_SIMILARITY, TaskQuality, task_metric
from tests.helpers.weights import tiny_checkpoint

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "eval" / "instructions.yaml"
INVOICE = '{"total": "12.50", "items": ["pen", "pen", "pen"]}'


# ------------------------------------------------------------------------------------------- the task
def test_the_task_writes_the_answer_verbatim_and_reads_it_back() -> None:
    task = get_task("<INSTRUCTION>")
    assert task is get_task("instruction") and task.output == "free_text"
    assert task.build_prompt("  Extract the invoice fields as JSON  ") == "Extract the invoice fields as JSON"
    target = task.serialize({"text": f" {INVOICE}\n"}, None)
    assert target == INVOICE and task.parse(f"<s>{target}</s><pad><pad>", (64, 48)) == INVOICE
    with pytest.raises(ValueError, match=r"cannot be written: it holds '</s>'"):
        task.serialize({"text": "a</s>b"}, None)


def test_generation_does_not_block_the_repeated_ngrams_of_json() -> None:
    processor = Florence2Processor(train_tokenizer(["a b c"] * 3, vocab_size=280))
    assert "no_repeat_ngram_size" not in processor.generation_kwargs("<INSTRUCTION>")
    assert processor.generation_kwargs("<INSTRUCTION>")["max_new_tokens"] == 1024
    assert processor.generation_kwargs("<VQA>")["no_repeat_ngram_size"] == 3  # short answers keep it


# ------------------------------------------------------------------------------------------- metrics
@pytest.mark.parametrize(
    ("prediction", "reference", "ned", "anls"),
    [
        ("12.5", "12.50", 1 / 5, 0.8),  # one deletion in five characters
        ("12.50", "12.5", 1 / 5, 0.8),
        ("12.50", "12.50", 0.0, 1.0),
        ("Total", "total", 1 / 5, 1.0),  # ANLS ignores case, as DocVQA compares answers; ned does not
        (" 12.50\n", "12.50", 2 / 7, 1.0),  # and surrounding whitespace
        ("ab", "ax", 0.5, 0.0),  # NL must be below the threshold, 0.5 itself scores 0
        ("abcd", "abxd", 0.25, 0.75),
        ("", "12.50", 1.0, 0.0),
        ("", "", 0.0, 1.0),
        # a long insertion: exact Levenshtein (torchmetrics' banded EditDistance says 35)
        ("a" * 100, "b" * 30 + "a" * 100, 30 / 130, 100 / 130),
    ],
)
def test_ned_and_anls_on_hand_computed_pairs(
    prediction: str, reference: str, ned: float, anls: float
) -> None:
    assert normalized_edit_distance(prediction, reference) == pytest.approx(ned)
    assert normalized_levenshtein_similarity(prediction, reference) == pytest.approx(anls)


def test_text_similarity_averages_over_answers() -> None:
    metric = TextSimilarity()
    metric.update(["12.5", INVOICE], ["12.50", INVOICE])
    metric.update([" wrong "], ["12.50"])
    result = {k: float(v) for k, v in metric.compute().items()}
    # "wrong" vs "12.50": five substitutions, NL = 1
    assert result == pytest.approx(
        {"exact_match": 1 / 3, "ned": (0.2 + 0 + 1) / 3, "anls": (0.8 + 1 + 0) / 3}
    )


def test_validation_reports_exact_match_ned_and_anls_for_the_instruction_task() -> None:
    assert task_metric("<INSTRUCTION>") == TEXT_SIMILARITY
    quality = TaskQuality(["<INSTRUCTION>", "<VQA>"])
    quality.update("<INSTRUCTION>", ["12.5", "12.50"], ["12.50", "12.50"], [(64, 48)] * 2)
    results = quality.compute()
    assert {k: v for k, v in results.items() if k.startswith("INSTRUCTION/")} == pytest.approx(
        {"INSTRUCTION/exact_match": 0.5, "INSTRUCTION/ned": 0.1, "INSTRUCTION/anls": 0.9}
    )
    assert torch.isnan(torch.tensor(results["VQA/exact_match"]))  # a task without samples stays unscored


# ------------------------------------------------------------------------------------------- evaluate
def records_file(root: Path) -> Path:
    """`configs/eval/instructions.yaml`'s records: two instruction tasks over two images."""
    folder = root / "instructions"
    folder.mkdir(parents=True)
    for name, colour in (("invoice.png", (250, 250, 250)), ("form.png", (30, 30, 200))):
        Image.new("RGB", (64, 48), colour).save(folder / name)
    records = [
        Record("invoice.png", 64, 48, id="invoice", instructions=[
            Instruction("Extract the invoice fields as JSON", INVOICE, "json_extraction"),
            Instruction("What is the total?", "12.50"),
        ]),
        Record("form.png", 64, 48, id="form", instructions=[Instruction("Who signed?", "J. Doe")]),
        Record("form.png", 64, 48, texts={"brief": ["A form."]}),  # no instruction: no sample
    ]  # fmt: skip
    path = folder / "val.jsonl"
    path.write_text("".join(r.to_json_line() + "\n" for r in records), encoding="utf-8")
    return path


def test_the_config_reads_every_instruction_of_a_record_file(tmp_path) -> None:
    records_file(tmp_path)
    samples, _ = load_samples(load_config(CONFIG), "val", tmp_path)
    assert [(s.key, s.text_input, s.target) for s in samples] == [
        ("invoice#0", "Extract the invoice fields as JSON", {"text": INVOICE, "task": "json_extraction"}),
        ("invoice#1", "What is the total?", {"text": "12.50", "task": "instruction"}),
        ("form#0", "Who signed?", {"text": "J. Doe", "task": "instruction"}),
    ]
    assert all(Path(s.image).is_file() for s in samples)
    result = instruction_score(samples, [INVOICE, "12.5", "j. doe"], {})
    assert result == pytest.approx({
        "score": 100 * (1 + 0.8 + 1) / 3, "exact_match": 100 / 3, "ned": 100 * (0 + 0.2 + 2 / 6) / 3,
        "instruction/exact_match": 0.0, "instruction/ned": 100 * (0.2 + 2 / 6) / 2, "instruction/anls": 90.0,
        "json_extraction/exact_match": 100.0, "json_extraction/ned": 0.0, "json_extraction/anls": 100.0,
    })  # fmt: skip


def test_evaluate_scores_a_checkpoint_on_the_instructions(tmp_path) -> None:
    records_file(tmp_path / "data")
    checkpoint = tiny_checkpoint(tmp_path / "checkpoint")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model on a shared 2-core machine: a second thread mostly spins
    try:
        (result,) = evaluate(
            [CONFIG], checkpoint, data_root=tmp_path / "data", device="cpu", image_size=64,
            out_dir=tmp_path / "out",
            overrides={"max_new_tokens": 8, "batch_size": 2, "num_workers": 0, "progress": False},
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    (split,) = result.splits
    assert split.num_samples == 3 and 0.0 <= split.score <= 100.0
    assert {"exact_match", "ned", "json_extraction/anls", "instruction/anls"} <= set(split.details)
    lines = (tmp_path / "out" / "predictions" / "instructions_val.jsonl").read_text().splitlines()
    inputs = [json.loads(line)["input"] for line in lines]
    assert inputs == ["Extract the invoice fields as JSON", "What is the total?", "Who signed?"]
    assert "| Instructions |" in (tmp_path / "out" / "results.md").read_text()
