"""Fuzzing: parsers, record validation, converters and the config checks raise nothing but their documented errors.

Each test is sized to a few seconds on two cores (the 10 000 mutated records of the whole data path to ~20 s);
`F2L_FUZZ_EXAMPLES` multiplies the example counts (CI nightly), `F2L_FUZZ_SEED` reseeds the record mutations.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from f2lightning.data.converters.coco import convert_coco_instances
from f2lightning.data.converters.icdar import parse_gt_line
from f2lightning.data.dataset import Collator, MultitaskDataset
from f2lightning.data.expand import expand
from f2lightning.data.records import read_records
from f2lightning.data.schema import BadRecordError, Record
from f2lightning.data.skips import SkipReport
from f2lightning.data.synthetic import SyntheticConfig, render_scene
from f2lightning.model.config import Florence2Config
from f2lightning.processor import Florence2Processor
from f2lightning.tasks import TASKS, get_task
from f2lightning.training.validation import ConfigError, validate_fit

SCALE = float(os.environ.get("F2L_FUZZ_EXAMPLES", "1"))


def fuzz(n: int):
    return settings(
        max_examples=max(1, int(n * SCALE)),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


# Model-like output: location tokens (also malformed / huge bins), structure tokens, labels, junk.
pieces = st.one_of(
    st.integers(-5, 10**25).map(lambda k: f"<loc_{k}>"),
    st.sampled_from(
        ["<poly>", "<sep>", "</s>", "<s>", "<pad>", "<loc_>", "<loc_0", "loc_1>", "<", ">", "\n", " "]
    ),
    st.text(max_size=8),
)
model_text = st.lists(pieces, max_size=40).map("".join)
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**6), 10**6))
image_sizes = st.tuples(st.integers(1, 4000), st.integers(1, 4000))
json_values = st.recursive(
    st.none() | st.booleans() | numbers | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)


@fuzz(2000)
@given(token=st.sampled_from(sorted(TASKS)), text=model_text, size=image_sizes)
def test_fuzz_task_parsers_never_raise(token, text, size):
    result = get_task(token).parse(text, size)
    assert isinstance(result, str | dict)
    if isinstance(result, dict):
        for key, values in result.items():
            assert isinstance(values, list), key


@fuzz(300)
@given(
    data=st.dictionaries(
        st.sampled_from(
            [
                "image",
                "width",
                "height",
                "id",
                "texts",
                "regions",
                "groundings",
                "ocr",
                "vqa",
                "exhaustive",
                "source",
            ]
        ),
        json_values,
        max_size=8,
    )
)
def test_fuzz_record_validation_raises_only_bad_record_error(data):
    try:
        record = Record.from_json(data, "fuzz:1")
    except BadRecordError as error:
        assert error.reason and "fuzz:1" in str(error)
        return
    # Whatever validates must survive its own JSON round trip.
    assert Record.from_json(json.loads(record.to_json_line()), "again").to_json() == record.to_json()


@fuzz(100)
@given(lines=st.lists(st.binary(max_size=60) | json_values.map(lambda v: json.dumps(v).encode()), max_size=6))
def test_fuzz_record_files_skip_or_raise_named_errors(tmp_path_factory, lines):
    path = tmp_path_factory.mktemp("jsonl") / "fuzz.jsonl"
    path.write_bytes(b"\n".join(lines))
    report = SkipReport()
    read_records(path, "skip", report=report)  # skip mode never raises on content
    try:
        read_records(path, "raise")
    except BadRecordError as error:
        assert str(error).startswith("fuzz.jsonl:")


boxes = st.lists(numbers, min_size=4, max_size=4)
polygon = st.lists(numbers, max_size=12)
annotations = st.fixed_dictionaries(
    {
        "image_id": st.integers(1, 3),
        "category_id": st.just(1),
        "bbox": boxes,
        "segmentation": st.lists(polygon, max_size=3),
        "iscrowd": st.sampled_from([0, 1]),
    }
)


@fuzz(100)
@given(
    anns=st.lists(annotations, max_size=8),
    name=st.text(min_size=1, max_size=10),
    sizes=st.lists(st.tuples(st.integers(1, 5000), st.integers(1, 5000)), min_size=3, max_size=3),
)
def test_fuzz_coco_converter_writes_only_valid_records(tmp_path_factory, anns, name, sizes):
    images = [
        {"id": i + 1, "file_name": f"{i}.jpg", "width": w, "height": h} for i, (w, h) in enumerate(sizes)
    ]
    path = tmp_path_factory.mktemp("coco") / "instances.json"
    path.write_text(
        json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": name}]})
    )
    for record in convert_coco_instances(path, "images", crowd="keep"):
        # NaN, inverted, outside and degenerate shapes are clipped or dropped: never written.
        Record.from_json(json.loads(record.to_json_line()), "converted")
        for region in record.regions:
            assert all(math.isfinite(v) for v in region.box)


@fuzz(500)
@given(
    line=st.text(max_size=80) | st.lists(st.text(max_size=6) | numbers.map(str), max_size=10).map(",".join)
)
def test_fuzz_icdar_lines_raise_only_value_error(line):
    try:
        quad, text = parse_gt_line(line)
    except ValueError:
        return
    assert len(quad) == 8 and isinstance(text, str)


@fuzz(200)
@given(
    source=st.dictionaries(
        st.sampled_from(["vision_config", "text_config", "vocab_size", "image_token_id"]),
        json_values,
        max_size=4,
    )
)
def test_fuzz_hf_config_loader_raises_only_documented_errors(source):
    # A malformed config.json fails as a type / value error, never deeper (e.g. an AttributeError).
    with contextlib.suppress(TypeError, ValueError):
        Florence2Config.from_hf_config(source)


config_values = st.one_of(
    st.none(), st.booleans(), numbers, st.text(max_size=12), st.lists(st.text(max_size=12), max_size=3)
)


@fuzz(300)
@given(
    model=st.dictionaries(
        st.sampled_from(
            [
                "preset",
                "pretrained",
                "tokenizer",
                "image_size",
                "lr",
                "freeze_vision_stages",
                "max_nonfinite_steps",
            ]
        ),
        config_values,
        max_size=5,
    ),
    data=st.dictionaries(
        st.sampled_from(
            [
                "tasks",
                "image_size",
                "batch_size",
                "max_prompt_length",
                "max_target_length",
                "on_bad_sample",
                "train_files",
                "tokenizer",
                "synthetic_dir",
            ]
        ),
        config_values,
        max_size=6,
    ),
    weights=st.dictionaries(st.sampled_from(["<OD>", "<CAPTION>", "<NOPE>"]), numbers, max_size=3),
    ckpt_path=config_values,
)
def test_fuzz_config_validation_raises_only_config_error(model, data, weights, ckpt_path):
    data["task_weights"] = weights
    if isinstance(data.get("tasks"), str):
        data["tasks"] = [data["tasks"]]
    try:
        validate_fit(model, data, ckpt_path if isinstance(ckpt_path, str) else None)
    except ConfigError as error:
        assert str(error).startswith("invalid training configuration:")


@pytest.mark.parametrize(
    "text", ["", "<loc_999999999999999999999999999>" * 4, "<poly>" * 50, "\x00\uffff<sep>"]
)
def test_parsers_handle_pathological_outputs(text):
    for token in TASKS:
        get_task(token).parse(text, (640, 480))


# ---- records through the whole data path -----------------------------------------------------------------
# Values a converter, an editor or a bad script could leave in a record. `DEEP` / `HUGE_INT` stand for JSON that
# `json.dumps` cannot write (it would recurse too deeply or refuse the integer); they are spliced into the line.
DEEP, HUGE_INT = "\x00deep\x00", "\x00huge-int\x00"
TEXTS = [
    "",
    " ",
    "\t\n ",
    "<",
    "a<b",
    ">",
    "two\nlines",
    "tail\n",
    "\r",
    "<loc_5>",
    "x <loc_999> y",
    "<loc_1000>",
    "</s>",
    "<pad>",
    "<poly>",
    "{input}",
    "é漢",
    "\x00",
    "x" * 300,
    "  dog  ",
]
NUMBERS = [
    0,
    -1,
    -0.0,
    0.5,
    1e-300,
    1e308,
    -1e308,
    math.inf,
    -math.inf,
    math.nan,
    10**20,
    2**63,
    10**400,
    HUGE_INT,
]
WRONG_TYPES = [None, True, False, [], {}, [[]], [None], "1", 7, 1.5, DEEP]
REPLACEMENTS = TEXTS + NUMBERS + WRONG_TYPES


def _walk(value, slots: list, containers: list) -> None:
    """Collect every (container, key) slot of a JSON tree, and every container."""
    if isinstance(value, dict | list):
        containers.append(value)
        for key in value if isinstance(value, dict) else range(len(value)):
            slots.append((value, key))
            _walk(value[key], slots, containers)


def _mutate(rng: random.Random, record: dict) -> None:
    slots: list = []
    containers: list = []
    _walk(record, slots, containers)
    if rng.random() < 0.15:  # lose, add or duplicate an entry
        container = rng.choice(containers)
        if container and rng.random() < 0.5:
            del container[
                rng.choice(list(container) if isinstance(container, dict) else range(len(container)))
            ]
        elif isinstance(container, list):
            container.append(
                rng.choice(container) if container and rng.random() < 0.5 else rng.choice(REPLACEMENTS)
            )
        else:
            key = rng.choice(["texts", "regions", "ocr", "vqa", "box", "span", "phrases", "unknown"])
            container[key] = rng.choice(REPLACEMENTS)
        return
    # Half of the draws aim at text: numbers (long polygons) would otherwise be most of the slots.
    texts = [(c, k) for c, k in slots if isinstance(c[k], str)]
    container, key = rng.choice(texts if texts and rng.random() < 0.5 else slots)
    old, roll = container[key], rng.random()
    if isinstance(old, str) and roll < 0.4:  # edit the text rather than replace it
        cut = rng.randrange(len(old) + 1)
        container[key] = old[:cut] + rng.choice(TEXTS) + old[cut:]
    elif isinstance(old, int | float) and not isinstance(old, bool) and abs(old) < 1e300 and roll < 0.4:
        container[key] = rng.choice([old * 1e6, -old, old + 0.5, old * 1e-9, math.nextafter(old, math.inf)])
    else:
        container[key] = rng.choice(REPLACEMENTS)


def _line(rng: random.Random, record: dict) -> bytes:
    line = json.dumps(record, ensure_ascii=rng.random() < 0.5).encode()
    line = line.replace(json.dumps(DEEP).encode(), b"[" * 5000 + b"]" * 5000)
    line = line.replace(json.dumps(HUGE_INT).encode(), b"9" * 5000)
    roll = rng.random()
    if roll < 0.02:
        return line[: rng.randrange(len(line))]  # truncated
    if roll < 0.03:
        return line + b"\xff"  # not UTF-8
    if roll < 0.04:
        return json.dumps(rng.choice(REPLACEMENTS)).encode()  # not an object at all
    return line


def _base_records() -> list[dict]:
    config = SyntheticConfig(image_size=64, max_shapes=2, max_text_lines=2)
    scenes = [render_scene(index, 0, config)[1].to_json() for index in range(6)]
    partial = {**scenes[0], "exhaustive": False, "id": 17, "source": "hand"}
    return [{**r, "image": "img.png"} for r in [*scenes, partial]]


def test_fuzz_mutated_records_are_trained_or_counted(tmp_path, tokenizer):
    """Schema → expand → processor → collate on mutated valid records: each one trains or is a counted skip."""
    rng = random.Random(int(os.environ.get("F2L_FUZZ_SEED", "0")))
    Image.new("RGB", (64, 64), "red").save(tmp_path / "img.png")
    bases = _base_records()
    lines = []
    for _ in range(int(10_000 * SCALE)):
        record = json.loads(json.dumps(rng.choice(bases)))
        for _ in range(rng.choice([1, 1, 2, 3])):
            _mutate(rng, record)
        lines.append(_line(rng, record))
    path = tmp_path / "mutated.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")

    report = SkipReport()
    records = read_records(path, "skip", check_images=True, report=report)
    assert len(records) + report.total == len(lines), "every line is kept or counted"
    assert len(records) > 0.1 * len(lines) and report.total > 0.1 * len(lines), (
        "the mutations are neither all harmless nor all fatal"
    )

    samples = [sample for record in records for sample in expand(record)]  # nothing kept may fail here
    assert all(s.prompt.strip() and s.target.strip() for s in samples), "no empty prompt or target trains"
    processor = Florence2Processor(tokenizer, image_size=32, max_prompt_length=64, max_target_length=64)
    # Each distinct target once (most mutations leave most of a record's samples as they were); prompts are
    # tokenized below, by the collator.
    targets = sorted({s.target for s in samples})
    for start in range(0, len(targets), 1024):
        processor.tokenize_targets(targets[start : start + 1024])

    by_task: dict[str, list] = {}
    for sample in rng.sample(samples, min(len(samples), 512)):
        by_task.setdefault(sample.task, []).append(sample)
    dataset = MultitaskDataset(by_task, processor)
    collate = Collator(processor)
    for start in range(0, len(dataset), 16):
        items = dataset.__getitems__(range(start, min(start + 16, len(dataset))))
        batch = collate(items)
        assert batch["size"] + len(batch["skipped"]) == len(items), "a sample the loader drops is counted"
        assert batch["labels"].shape[0] == batch["input_ids"].shape[0] == batch["size"] > 0
