"""Which tasks a record supports (Table 13's annotation → task mapping) and their rendering."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from PIL import Image

from f2lightning.data.datamodule import Florence2DataModule
from f2lightning.data.dataset import Collator
from f2lightning.data.expand import ALL_TASKS, Sample, expand, task_annotations
from f2lightning.data.schema import Grounding, Instruction, OcrLine, Phrase, Record, Region, VqaPair
from f2lightning.tasks import TaskAnnotation, get_task, register_task
from f2lightning.tokenizer import train_tokenizer
from f2lightning.training.quality import TaskQuality

BOX_A, BOX_B = [10.0, 10.0, 50.0, 40.0], [60.0, 5.0, 90.0, 45.0]
SQUARE = [10.0, 10.0, 50.0, 10.0, 50.0, 40.0, 10.0, 40.0]


def full_record(**overrides) -> Record:
    fields = dict(
        image="img.png",
        width=100,
        height=50,
        texts={
            "brief": ["a dog and a cat."],
            "detailed": ["A long text."],
            "more_detailed": ["A paragraph."],
        },
        regions=[
            Region(box=BOX_A, category="dog", brief="a brown dog", polygons=[SQUARE], referring=["the dog"]),
            Region(box=BOX_B, category="cat", phrase="cat"),
        ],
        groundings=[Grounding("a dog and a cat.", [Phrase((0, 5), [BOX_A]), Phrase((10, 15), [BOX_B])])],
        ocr=[OcrLine([1, 1, 9, 1, 9, 5, 1, 5], "EXIT"), OcrLine([20, 1, 30, 1, 30, 5, 20, 5], "42")],
        vqa=[VqaPair("what animal?", ["dog", "cat", "cat"])],
        instructions=[Instruction("List the animals as JSON.", '{"animals": ["dog", "cat"]}', "json")],
    )
    return Record(**{**fields, **overrides})


def by_task(record: Record, tasks=None) -> dict[str, list]:
    out: dict[str, list] = {}
    for a in task_annotations(record, tasks):
        out.setdefault(a.task, []).append(a)
    return out


def test_a_full_record_supports_every_task() -> None:
    assert set(by_task(full_record())) == set(ALL_TASKS)


def test_annotations() -> None:
    t = by_task(full_record())
    assert t["<OD>"][0].annotation == {"bboxes": [BOX_A, BOX_B], "labels": ["dog", "cat"]}
    assert [a.text_input for a in t["<OPEN_VOCABULARY_DETECTION>"]] == ["dog", "cat"]
    # dense captions use the brief text, else the phrase
    assert t["<DENSE_REGION_CAPTION>"][0].annotation["labels"] == ["a brown dog", "cat"]
    assert t["<REGION_PROPOSAL>"][0].annotation == {"bboxes": [BOX_A, BOX_B]}
    assert [(a.region, a.annotation["text"]) for a in t["<REGION_TO_CATEGORY>"]] == [
        (BOX_A, "dog"),
        (BOX_B, "cat"),
    ]
    (rec,) = t["<REFERRING_EXPRESSION_COMPREHENSION>"]
    assert rec.text_input == "the dog" and rec.annotation["bboxes"] == [BOX_A]
    assert t["<REFERRING_EXPRESSION_SEGMENTATION>"][0].annotation == {"polygons": [[SQUARE]]}
    assert t["<REGION_TO_SEGMENTATION>"][0].region == BOX_A  # only the region with polygons
    assert len(t["<REGION_TO_SEGMENTATION>"]) == 1
    assert t["<CAPTION_TO_PHRASE_GROUNDING>"][0].annotation == {
        "bboxes": [BOX_A, BOX_B],
        "labels": ["a dog", "a cat"],
    }
    assert t["<OCR>"][0].annotation == {"text": "EXIT\n42"}
    assert t["<OCR_WITH_REGION>"][0].annotation["labels"] == ["EXIT", "42"]
    assert [a.region for a in t["<REGION_TO_OCR>"]] == [[1, 1, 9, 5], [20, 1, 30, 5]]
    assert t["<VQA>"][0].annotation == {"text": "cat"}  # the most frequent answer
    assert [len(t[k]) for k in ("<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>")] == [1, 1, 1]


def test_partial_annotations_generate_no_listing_tasks() -> None:
    tasks = set(by_task(full_record(exhaustive=False)))
    assert not tasks & {"<OD>", "<OPEN_VOCABULARY_DETECTION>", "<DENSE_REGION_CAPTION>", "<REGION_PROPOSAL>"}
    assert {"<REGION_TO_CATEGORY>", "<REFERRING_EXPRESSION_COMPREHENSION>"} <= tasks


def test_restricted_and_unknown_tasks() -> None:
    assert set(by_task(full_record(), ["<OD>", "<VQA>"])) == {"<OD>", "<VQA>"}
    with pytest.raises(ValueError, match="unknown task"):
        task_annotations(full_record(), ["<DETECT>"])


def test_a_task_keeps_only_what_its_own_producer_yields() -> None:
    od = get_task("<OD>")

    def dogs_only(record: Record) -> list[TaskAnnotation]:
        return [TaskAnnotation("<OD>", {"bboxes": [BOX_A], "labels": ["dog"]})]

    register_task(dataclasses.replace(od, producer=dogs_only), replace=True)
    try:
        # the regions' producer still yields OD annotations; only the task's own producer counts
        (a,) = task_annotations(full_record(), ["object_detection"])
        assert a.annotation == {"bboxes": [BOX_A], "labels": ["dog"]}
    finally:
        register_task(od, replace=True)
    assert [a.annotation["labels"] for a in by_task(full_record())["<OD>"]] == [["dog", "cat"]]


def test_expand_renders_prompts_and_targets() -> None:
    record = full_record()
    samples = expand(record)
    assert all(
        isinstance(s, Sample) and s.image_size == (100, 50) and s.image_path == "img.png" for s in samples
    )
    assert {s.task for s in samples} == set(ALL_TASKS)
    od = next(s for s in samples if s.task == "<OD>")
    assert od.prompt == get_task("<OD>").build_prompt()
    assert od.target == get_task("<OD>").serialize(
        {"bboxes": [BOX_A, BOX_B], "labels": ["dog", "cat"]}, (100, 50)
    )
    vqa = next(s for s in samples if s.task == "<VQA>")
    assert (vqa.prompt, vqa.target) == ("what animal?", "cat")


def test_labels_at_the_edge_of_the_writability_rule_validate_and_expand() -> None:
    # What the schema lets through must expand: padded labels, '>' and, in OCR text only, '<'.
    record = full_record(
        regions=[Region(box=BOX_A, category="  dog ", brief="a>b", referring=["the dog\t"])],
        ocr=[OcrLine([1, 1, 9, 1, 9, 5, 1, 5], "x < y")],
    )
    record = Record.from_json(record.to_json(), "edge.jsonl:1")
    targets = {s.task: s.target for s in expand(record)}
    assert targets["<OD>"].startswith("dog<loc_")
    assert targets["<DENSE_REGION_CAPTION>"].startswith("a>b<loc_")
    assert get_task("<OCR_WITH_REGION>").parse(targets["<OCR_WITH_REGION>"], (100, 50))["labels"] == ["x < y"]


# ------------------------------------------------------------------------------------ verified negatives
LISTING = {"<OD>", "<OPEN_VOCABULARY_DETECTION>", "<DENSE_REGION_CAPTION>", "<REGION_PROPOSAL>"}


def test_a_verified_negative_trains_detection_and_proposals_to_answer_nothing() -> None:
    negative = Record("img.png", 100, 50, no_objects=True, texts={"brief": ["an empty road."]})
    t = by_task(negative)
    assert set(t) == {"<OD>", "<REGION_PROPOSAL>", "<CAPTION>"}  # no category to ask open-vocabulary about
    assert t["<OD>"][0].annotation == {"bboxes": [], "labels": []}
    assert t["<REGION_PROPOSAL>"][0].annotation == {"bboxes": []}
    targets = {s.task: s.target for s in expand(negative)}
    assert targets["<OD>"] == targets["<REGION_PROPOSAL>"] == ""  # the answer is the end token alone
    for task in ("<OD>", "<REGION_PROPOSAL>"):
        assert get_task(task).parse(targets[task], (100, 50)) == {"bboxes": [], "labels": []}
    # An image without regions and without the flag says nothing about its objects: no listing sample.
    unchecked = dataclasses.replace(negative, no_objects=False)
    assert not set(by_task(unchecked)) & LISTING


def test_box_recall_leaves_an_empty_target_out_instead_of_failing() -> None:
    quality = TaskQuality(["<OD>"])
    empty = {"bboxes": [], "labels": []}
    quality.update(
        "<OD>", [{"bboxes": [[1, 1, 9, 9]], "labels": ["dog"]}, empty], [empty, empty], [(10, 10)] * 2
    )
    assert torch.isnan(torch.tensor(quality.compute()["OD/box_recall@0.5"]))  # nothing to recall: no number
    quality.update("<OD>", [{"bboxes": [[1, 1, 9, 9]], "labels": ["dog"]}], [{"bboxes": [[1, 1, 9, 9]],
                   "labels": ["dog"]}], [(10, 10)])  # fmt: skip
    assert quality.compute()["OD/box_recall@0.5"] == 1.0  # the negatives do not dilute the positives


# ------------------------------------------------------------------------------------------ instructions
def test_each_instruction_is_one_sample_with_its_own_prompt_trained_verbatim() -> None:
    record = full_record(
        instructions=[
            Instruction(
                "Extract the fields as JSON.", '{"total": "12.50", "items": ["a", "a", "a"]}', "json"
            ),
            Instruction("  What is the date?  ", "2024-03-01"),
        ]
    )
    (json_sample, date_sample) = [s for s in expand(record) if s.task == "<INSTRUCTION>"]
    assert (json_sample.prompt, json_sample.target) == (
        "Extract the fields as JSON.", '{"total": "12.50", "items": ["a", "a", "a"]}',
    )  # fmt: skip
    assert (date_sample.prompt, date_sample.target) == ("What is the date?", "2024-03-01")
    task = get_task("instruction")
    assert task.parse(f"<s>{json_sample.target}</s><pad>", (100, 50)) == json_sample.target
    # JSON repeats n-grams (`", "a`): generation must not block them.
    assert task.location_heavy and task.max_new_tokens == 1024


def test_the_datamodule_trains_negatives_and_instructions_from_record_files(tmp_path) -> None:
    Image.new("RGB", (64, 48), (9, 9, 9)).save(tmp_path / "road.png")
    Image.new("RGB", (64, 48), (200, 9, 9)).save(tmp_path / "invoice.png")
    records = [
        Record("road.png", 64, 48, no_objects=True),
        Record("invoice.png", 64, 48, instructions=[Instruction("Fields as JSON?", '{"total": "12.50"}')]),
    ]
    for name in ("train", "val"):
        (tmp_path / f"{name}.jsonl").write_text("".join(r.to_json_line() + "\n" for r in records))
    texts = ["Locate the objects with category name in the image.", "Fields as JSON?", '{"total": "12.50"}']
    train_tokenizer(texts * 5, vocab_size=300).save_pretrained(tmp_path / "tok")
    dm = Florence2DataModule(
        train_files=[str(tmp_path / "train.jsonl")], val_files=[str(tmp_path / "val.jsonl")],
        tokenizer=str(tmp_path / "tok"), image_size=32, batch_size=2, num_workers=0,
    )  # fmt: skip
    dm.setup("fit")
    assert dm.train_dataset.task_sizes == {"<OD>": 1, "<REGION_PROPOSAL>": 1, "<INSTRUCTION>": 1}
    od, proposals, instruction = (dm.train_dataset[i] for i in range(3))
    assert (od.target, proposals.target) == ("", "")
    assert (instruction.prompt, instruction.target) == ("Fields as JSON?", '{"total": "12.50"}')
    batch = Collator(dm.processor)([od, instruction])
    tokenizer = dm.processor.tokenizer
    empty, answer = batch["labels"].tolist()
    assert [t for t in empty if t != -100] == [tokenizer.bos_token_id, tokenizer.eos_token_id]
    decoded = tokenizer.decode([t for t in answer if t != -100], skip_special_tokens=True)
    assert json.loads(decoded) == {"total": "12.50"}
