"""Fuzzing: parsers, record validation, converters and the config checks raise nothing but their documented errors.

Each test is sized to a few seconds on two cores; `F2L_FUZZ_EXAMPLES` multiplies the example counts (CI nightly).
"""

from __future__ import annotations

import contextlib
import json
import math
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from f2lightning.data.converters.coco import convert_coco_instances
from f2lightning.data.converters.icdar import parse_gt_line
from f2lightning.data.records import SkipReport, read_records
from f2lightning.data.schema import BadRecordError, Record
from f2lightning.model.config import Florence2Config
from f2lightning.tasks import TASKS, get_task
from f2lightning.training.validation import ConfigError, validate_fit

SCALE = float(os.environ.get("F2L_FUZZ_EXAMPLES", "1"))


def fuzz(n: int):
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


# Model-like output: location tokens (also malformed / huge bins), structure tokens, labels, junk.
pieces = st.one_of(
    st.integers(-5, 10**25).map(lambda k: f"<loc_{k}>"),
    st.sampled_from(["<poly>", "<sep>", "</s>", "<s>", "<pad>", "<loc_>", "<loc_0", "loc_1>", "<", ">", "\n", " "]),
    st.text(max_size=8),
)
model_text = st.lists(pieces, max_size=40).map("".join)
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6))
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
@given(data=st.dictionaries(st.sampled_from(["image", "width", "height", "id", "texts", "regions", "groundings",
                                              "ocr", "vqa", "exhaustive", "source"]), json_values, max_size=8))
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
    {"image_id": st.integers(1, 3), "category_id": st.just(1), "bbox": boxes,
     "segmentation": st.lists(polygon, max_size=3), "iscrowd": st.sampled_from([0, 1])}
)


@fuzz(100)
@given(anns=st.lists(annotations, max_size=8), name=st.text(min_size=1, max_size=10),
       sizes=st.lists(st.tuples(st.integers(1, 5000), st.integers(1, 5000)), min_size=3, max_size=3))
def test_fuzz_coco_converter_writes_only_valid_records(tmp_path_factory, anns, name, sizes):
    images = [{"id": i + 1, "file_name": f"{i}.jpg", "width": w, "height": h} for i, (w, h) in enumerate(sizes)]
    path = tmp_path_factory.mktemp("coco") / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": name}]}))
    for record in convert_coco_instances(path, "images", crowd="keep"):
        # NaN, inverted, outside and degenerate shapes are clipped or dropped: never written.
        Record.from_json(json.loads(record.to_json_line()), "converted")
        for region in record.regions:
            assert all(math.isfinite(v) for v in region.box)


@fuzz(500)
@given(line=st.text(max_size=80) | st.lists(st.text(max_size=6) | numbers.map(str), max_size=10).map(",".join))
def test_fuzz_icdar_lines_raise_only_value_error(line):
    try:
        quad, text = parse_gt_line(line)
    except ValueError:
        return
    assert len(quad) == 8 and isinstance(text, str)


@fuzz(200)
@given(source=st.dictionaries(st.sampled_from(["vision_config", "text_config", "vocab_size", "image_token_id"]),
                              json_values, max_size=4))
def test_fuzz_hf_config_loader_raises_only_documented_errors(source):
    # A malformed config.json fails as a type / value error, never deeper (e.g. an AttributeError).
    with contextlib.suppress(TypeError, ValueError):
        Florence2Config.from_hf_config(source)


config_values = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=12), st.lists(st.text(max_size=12), max_size=3))


@fuzz(300)
@given(
    model=st.dictionaries(st.sampled_from(["preset", "pretrained", "tokenizer", "image_size", "lr", "freeze_vision_stages",
                                           "max_nonfinite_steps"]), config_values, max_size=5),
    data=st.dictionaries(st.sampled_from(["tasks", "image_size", "batch_size", "max_prompt_length", "max_target_length",
                                          "on_bad_sample", "train_files", "tokenizer", "synthetic_dir"]),
                         config_values, max_size=6),
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


@pytest.mark.parametrize("text", ["", "<loc_999999999999999999999999999>" * 4, "<poly>" * 50, "\x00\uffff<sep>"])
def test_parsers_handle_pathological_outputs(text):
    for token in TASKS:
        get_task(token).parse(text, (640, 480))
