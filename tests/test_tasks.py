"""The task registry, prompts, target serialization and parsing: round trips, malformed text, canonical geometry,
and agreement with transformers' Florence-2 processor, the reference for released checkpoints."""

from __future__ import annotations

import contextlib
import math
import random
import time
from types import SimpleNamespace

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from transformers.models.florence2 import processing_florence2 as florence2

from f2lightning.geometry import clockwise_polygon, clockwise_quad, normalise_box, signed_area
from f2lightning.tasks import TASKS, Task, get_task, parse, register_task, unregister_task
from f2lightning.tasks.formats import BANNED_GROUNDING_PHRASES

PAPER_TASKS = [  # Tables 13 and 14
    "<CAPTION>",
    "<DETAILED_CAPTION>",
    "<MORE_DETAILED_CAPTION>",
    "<REGION_PROPOSAL>",
    "<OD>",
    "<DENSE_REGION_CAPTION>",
    "<CAPTION_TO_PHRASE_GROUNDING>",
    "<REFERRING_EXPRESSION_COMPREHENSION>",
    "<OPEN_VOCABULARY_DETECTION>",
    "<REFERRING_EXPRESSION_SEGMENTATION>",
    "<REGION_TO_CATEGORY>",
    "<REGION_TO_DESCRIPTION>",
    "<REGION_TO_SEGMENTATION>",
    "<REGION_TO_OCR>",
    "<OCR>",
    "<OCR_WITH_REGION>",
    "<VQA>",
]
SIZE = (640, 480)
BANNED = BANNED_GROUNDING_PHRASES

# ------------------------------------------------------------------------------------------- strategies

image_sizes = st.tuples(st.integers(1, 4000), st.integers(1, 4000))
ascii_labels = st.text(
    st.characters(min_codepoint=32, max_codepoint=126, exclude_characters="<"), max_size=12
)
box_labels = st.one_of(st.sampled_from(["dog", "cat", " a red car "]), ascii_labels).filter(str.strip)
ocr_texts = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="<\n"), max_size=12).filter(
    str.strip
)
# Malformed model output: runs of location tokens (often not a multiple of 4, 8 or 2), structure tokens,
# generation markers, words, unicode and stray brackets, in any order.
location_runs = st.lists(st.integers(0, 1100).map(lambda k: f"<loc_{k}>"), min_size=1, max_size=10).map(
    "".join
)
garbage_pieces = st.one_of(
    location_runs,
    st.sampled_from(
        [
            "<poly>",
            "</poly>",
            "<sep>",
            "<s>",
            "</s>",
            "<pad>",
            "<od>",
            "<",
            ">",
            " ",
            "\n",
            "a dog",
            # phrases the released processor's phrase grounding drops
            "it",
            " the image ",
            "a",
            "I",
            "é",
            "漢",
        ]
    ),
    st.text(max_size=4),
)
garbage = st.lists(garbage_pieces, max_size=25).map("".join)


def points(draw, size, n):
    return [draw(st.floats(0, size[i % 2], allow_nan=False)) for i in range(2 * n)]


@st.composite
def sized_annotations(draw, output):
    """An image size and a valid annotation for `output`."""
    size = draw(image_sizes)
    n = draw(st.integers(0, 5))
    if output == "text":
        text = draw(st.text(max_size=30).filter(lambda t: not any(m in t for m in ("<s>", "</s>", "<pad>"))))
        return size, {"text": text}
    if output in ("boxes", "phrase_grounding", "region_proposals"):
        # A banned phrase is written, but parsing drops it (test_phrase_grounding_drops_banned_phrases).
        allowed = box_labels.filter(lambda label: output != "phrase_grounding" or label.strip() not in BANNED)
        labels = [draw(allowed) for _ in range(n)]
        return size, {"bboxes": [points(draw, size, 2) for _ in range(n)], "labels": labels}
    if output == "quad_boxes":
        return size, {
            "quad_boxes": [points(draw, size, 4) for _ in range(n)],
            "labels": [draw(ocr_texts) for _ in range(n)],
        }
    objects = [
        [points(draw, size, draw(st.integers(3, 7))) for _ in range(draw(st.integers(1, 3)))]
        for _ in range(n)
    ]
    if output == "polygons":
        return size, {"polygons": objects}
    # open-vocabulary detection: boxes or polygons
    labels = [draw(box_labels) for _ in range(n)]
    if draw(st.booleans()):
        return size, {"polygons": objects, "polygons_labels": labels}
    return size, {"bboxes": [points(draw, size, 2) for _ in range(n)], "bboxes_labels": labels}


def expected_parse(output, annotation):
    """What parsing the serialized annotation gives back, before quantization."""
    if output == "text":
        return annotation["text"].strip()
    if output in ("boxes", "phrase_grounding", "region_proposals"):
        labels = (
            [lab.strip() for lab in annotation["labels"]]
            if output != "region_proposals"
            else [""] * len(annotation["labels"])
        )
        return {"bboxes": [normalise_box(b) for b in annotation["bboxes"]], "labels": labels}
    if output == "quad_boxes":
        return {
            "quad_boxes": [clockwise_quad(q) for q in annotation["quad_boxes"]],
            "labels": [t.strip() for t in annotation["labels"]],
        }
    polygons = [[clockwise_polygon(p) for p in obj] for obj in annotation.get("polygons", [])]
    if output == "polygons":
        return {"polygons": polygons, "labels": [""] * len(polygons)}
    return {
        "bboxes": [normalise_box(b) for b in annotation.get("bboxes", [])],
        "bboxes_labels": [lab.strip() for lab in annotation.get("bboxes_labels", [])],
        "polygons": polygons,
        "polygons_labels": [lab.strip() for lab in annotation.get("polygons_labels", [])],
    }


def assert_within_one_bin(actual, expected, size):
    """Equal structure and strings; coordinates (alternating x, y) within one bin of the image axis."""
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys()
        for key in expected:
            assert_within_one_bin(actual[key], expected[key], size)
    elif isinstance(expected, list):
        assert len(actual) == len(expected)
        for i, (a, e) in enumerate(zip(actual, expected)):
            if isinstance(e, float):
                assert abs(a - e) <= size[i % 2] / 1000 * (1 + 1e-9)
            else:
                assert_within_one_bin(a, e, size)
    else:
        assert actual == expected


# --------------------------------------------------------------------------------------------- registry


def test_every_paper_task_is_registered():
    assert set(PAPER_TASKS) <= set(TASKS)
    for token in PAPER_TASKS:
        task = TASKS[token]
        assert task.token == token and task.max_new_tokens > 0
        assert task.location_heavy or task.output == "text"


def test_get_task_by_token_or_name():
    assert get_task("<OD>") is get_task("object_detection") is TASKS["<OD>"]
    assert get_task("open_vocabulary_detection").token == "<OPEN_VOCABULARY_DETECTION>"
    assert get_task(TASKS["<OCR>"]) is TASKS["<OCR>"]
    with pytest.raises(KeyError, match=r"<OD> \(object_detection\)"):
        get_task("<DETECT>")


def test_register_task_refuses_clashes_unless_replacing():
    with pytest.raises(ValueError, match="clashes"):
        register_task(Task("<OD>", "Find things.", 10, True, "boxes"))
    custom = Task("<COUNT_TEST>", "How many {input}?", 8, False)
    order = list(TASKS)
    try:
        assert register_task(custom) is get_task("count_test")
        assert list(TASKS) == [*order, "<COUNT_TEST>"]
        register_task(Task("<AFTER_TEST>", "After.", 8, False))
        replacement = register_task(Task("<COUNT_TEST>", "Count {input}.", 8, False), replace=True)
        assert get_task("<COUNT_TEST>") is replacement
        # a replaced task keeps its place: the training data's task order (its dataset indices) does not move
        assert list(TASKS) == [*order, "<COUNT_TEST>", "<AFTER_TEST>"]
    finally:
        for token in ("<COUNT_TEST>", "<AFTER_TEST>"):
            if token in TASKS:
                unregister_task(token)
    assert list(TASKS) == order


def test_unknown_output_format_is_refused():
    with pytest.raises(ValueError, match="output format"):
        Task("<X>", "x", 1, False, "masks")


def test_location_heavy_tasks_generate_long_outputs():
    for token in (
        "<OD>",
        "<REFERRING_EXPRESSION_SEGMENTATION>",
        "<REGION_TO_SEGMENTATION>",
        "<OCR_WITH_REGION>",
    ):
        assert get_task(token).location_heavy and get_task(token).max_new_tokens >= 1024
    assert not get_task("<CAPTION>").location_heavy


# ---------------------------------------------------------------------------------------------- prompts


def test_prompts():
    assert get_task("<OD>").build_prompt() == "Locate the objects with category name in the image."
    assert (
        get_task("<OPEN_VOCABULARY_DETECTION>").build_prompt(" a {green} car ")
        == "Locate a {green} car in the image."
    )
    assert get_task("<VQA>").build_prompt("What color is the car?") == "What color is the car?"
    region = get_task("<REGION_TO_CATEGORY>").build_prompt(region=[640, 480, 0, 0], image_size=SIZE)
    assert region == "What is the region <loc_0><loc_0><loc_999><loc_999>?"  # normalised corner order
    loc_text = get_task("<REGION_TO_OCR>").build_prompt("<loc_1><loc_2><loc_3><loc_4>")
    assert loc_text == "What text is in the region <loc_1><loc_2><loc_3><loc_4>?"


def test_prompt_input_errors():
    with pytest.raises(ValueError, match="takes no input"):
        get_task("<CAPTION>").build_prompt("a dog")
    with pytest.raises(ValueError, match="needs an input"):
        get_task("<CAPTION_TO_PHRASE_GROUNDING>").build_prompt()
    with pytest.raises(ValueError, match="image_size"):
        get_task("<REGION_TO_SEGMENTATION>").build_prompt(region=[1, 2, 3, 4])


# ---------------------------------------------------------------------------------------- serialization


def test_box_targets_group_consecutive_labels():
    boxes = {"bboxes": [[0, 0, 64, 48], [640, 480, 320, 240], [0, 0, 1, 1]], "labels": ["dog", " dog", "cat"]}
    target = get_task("<CAPTION_TO_PHRASE_GROUNDING>").serialize(boxes, SIZE)
    assert (
        target
        == "dog<loc_0><loc_0><loc_100><loc_100><loc_500><loc_500><loc_999><loc_999>cat"
        + "<loc_0>" * 2
        + "<loc_1><loc_2>"
    )
    assert (
        get_task("<REGION_PROPOSAL>").serialize({"bboxes": [[0, 0, 64, 48]]}, SIZE)
        == "<loc_0><loc_0><loc_100><loc_100>"
    )


def test_quad_corners_start_top_left_and_turn_clockwise():
    bottom_left_ccw = [0, 10, 20, 10, 20, 0, 0, 0]  # starts bottom-left, counter-clockwise on screen
    assert clockwise_quad(bottom_left_ccw) == [0, 0, 20, 0, 20, 10, 0, 10]
    bow_tie = [0, 0, 20, 10, 20, 0, 0, 10]
    assert clockwise_quad(bow_tie) == [0, 0, 20, 0, 20, 10, 0, 10]
    target = get_task("<OCR_WITH_REGION>").serialize(
        {"quad_boxes": [bottom_left_ccw], "labels": ["EXIT"]}, (1000, 1000)
    )
    assert target == "EXIT<loc_0><loc_0><loc_20><loc_0><loc_20><loc_10><loc_0><loc_10>"


def test_polygons_turn_clockwise_on_screen_keeping_first_vertex():
    ccw = [0, 0, 0, 10, 10, 10, 10, 0]  # top-left, bottom-left, bottom-right, top-right
    assert signed_area(ccw) < 0
    assert clockwise_polygon(ccw) == [0, 0, 10, 0, 10, 10, 0, 10]
    assert signed_area(clockwise_polygon(ccw)) > 0
    assert clockwise_polygon([0, 0, 10, 0, 10, 10]) == [0, 0, 10, 0, 10, 10]


def test_polygon_targets():
    square = [0, 0, 100, 0, 100, 100]
    one_object = {"polygons": [[square, square]]}
    locs = "<loc_0><loc_0><loc_100><loc_0><loc_100><loc_100>"
    assert (
        get_task("<REFERRING_EXPRESSION_SEGMENTATION>").serialize(one_object, (1000, 1000))
        == f"{locs}<sep>{locs}"
    )
    two_objects = {"polygons": [[square], [square]]}
    assert (
        get_task("<REGION_TO_SEGMENTATION>").serialize(two_objects, (1000, 1000))
        == f"<poly>{locs}</poly>" * 2
    )
    ovd = {"polygons": [[square], [square]], "polygons_labels": ["cat", "cat"]}
    assert (
        get_task("<OPEN_VOCABULARY_DETECTION>").serialize(ovd, (1000, 1000))
        == f"cat<poly>{locs}</poly><poly>{locs}</poly>"
    )


def test_region_to_text_targets_may_echo_the_region():
    task = get_task("<REGION_TO_CATEGORY>")
    assert task.serialize({"text": "car"}, SIZE) == "car"
    target = task.serialize({"text": "car ", "region": [0, 0, 640, 480]}, SIZE)
    assert target == "car<loc_0><loc_0><loc_999><loc_999>"
    assert task.parse(f"<s>{target}</s>", SIZE) == target


@pytest.mark.parametrize(
    ("token", "annotation", "message"),
    [
        ("<OD>", {"bboxes": [[0, 0, 1, 1]], "labels": [" "]}, "non-empty"),
        ("<OD>", {"bboxes": [[0, 0, 1, 1]], "labels": ["a<b"]}, "non-empty"),
        ("<OD>", {"bboxes": [[0, 0, 1, 1]], "labels": []}, "labels"),
        ("<OCR_WITH_REGION>", {"quad_boxes": [[0] * 8], "labels": ["two\nlines"]}, "non-empty"),
        ("<OCR_WITH_REGION>", {"quad_boxes": [[0] * 8], "labels": ["<loc_3>"]}, "location token"),
        ("<OCR_WITH_REGION>", {"quad_boxes": [[0] * 6], "labels": ["a"]}, "8 coordinates"),
        ("<REGION_TO_SEGMENTATION>", {"polygons": [[[0, 0, 1, 1]]]}, "3"),
        ("<REGION_TO_SEGMENTATION>", {"polygons": [[]]}, "at least one polygon"),
        (
            "<OPEN_VOCABULARY_DETECTION>",
            {
                "bboxes": [[0, 0, 1, 1]],
                "bboxes_labels": ["a"],
                "polygons": [[[0] * 6]],
                "polygons_labels": ["a"],
            },
            "not both",
        ),
    ],
)
def test_unwritable_annotations_are_refused(token, annotation, message):
    with pytest.raises(ValueError, match=message):
        get_task(token).serialize(annotation, SIZE)


# ------------------------------------------------------------------------------------- round trips


@given(token=st.sampled_from(PAPER_TASKS), data=st.data())
@settings(max_examples=200, deadline=None)
def test_serialize_then_parse_round_trips(token, data):
    task = get_task(token)
    size, annotation = data.draw(sized_annotations(task.output))
    target = task.serialize(annotation, size)
    assert "<loc_1000>" not in target
    parsed = parse(token, f"<s>{target}</s><pad><pad>", size)
    assert_within_one_bin(parsed, expected_parse(task.output, annotation), size)


def test_box_labels_lose_non_ascii_like_florence2():
    target = get_task("<OD>").serialize({"bboxes": [[0, 0, 10, 10]], "labels": ["café"]}, SIZE)
    assert parse("<OD>", target, SIZE)["labels"] == ["caf"]


@given(token=st.sampled_from(PAPER_TASKS), text=garbage, size=image_sizes)
@settings(max_examples=200, deadline=None)
def test_parsing_malformed_text_never_raises(token, text, size):
    parsed = parse(token, text, size)
    assert isinstance(parsed, str | dict)


def test_parsing_absurd_text_never_raises():
    huge = "<loc_" + "9" * 400 + ">"  # beyond float range without the cap
    for token in PAPER_TASKS:
        parse(token, f"a{huge * 8}<poly>{huge * 6}<sep>{huge}</poly>", SIZE)
        parse(token, "", SIZE)


# ------------------------------------------------------------------------ transformers as the reference


class BinCentrePostProcessor(florence2.Florence2PostProcessor):
    """transformers' post-processor with Microsoft's float bin centres instead of transformers' `.int()` cast,
    in float64 so that results can match to 1e-6."""

    def dequantize(self, locations, size):
        per_bin = torch.tensor(
            [size[0] / 1000, size[1] / 1000] * (locations.shape[-1] // 2), dtype=torch.float64
        )
        return (locations.to(torch.float64) + 0.5) * per_bin


def reference_processor(post_processor_class):
    """A `Florence2Processor` in text mode: its prompt tables and `post_process_generation`, without the image
    processor and tokenizer it would need to run a model (its `__init__` fails once the tables are set)."""
    processor = florence2.Florence2Processor.__new__(florence2.Florence2Processor)
    with contextlib.suppress(AttributeError):
        florence2.Florence2Processor.__init__(processor)
    kinds = set(processor.tasks_answer_post_processing_type.values())
    tokenizer = SimpleNamespace(all_special_tokens=["<s>", "</s>", "<pad>", "<unk>"])
    # The released processor_config.json parse settings: phrase grounding bans phrases (OCR's are the defaults).
    config = {kind: {} for kind in kinds} | {"phrase_grounding": {"banned_grounding_tokens": sorted(BANNED)}}
    processor.post_processor = post_processor_class(config, tokenizer)
    return processor


REFERENCE = reference_processor(BinCentrePostProcessor)
STOCK = reference_processor(florence2.Florence2PostProcessor)
REFERENCE_TASKS = sorted(REFERENCE.tasks_answer_post_processing_type)
TEXT_TASKS = [t for t, kind in REFERENCE.tasks_answer_post_processing_type.items() if kind == "pure_text"]


def assert_same(ours, theirs, tolerance):
    if isinstance(theirs, dict):
        assert ours.keys() == theirs.keys()
        for key in theirs:
            assert_same(ours[key], theirs[key], tolerance)
    elif isinstance(theirs, list):
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            assert_same(a, b, tolerance)
    elif isinstance(theirs, int | float):
        assert math.isclose(ours, theirs, rel_tol=0, abs_tol=tolerance)
    else:
        assert ours == theirs


def reference_parse(processor, token, text, size):
    return processor.post_process_generation(text=text, task=token, image_size=size)[token]


def test_reference_tasks_are_registered_with_matching_formats():
    formats = {
        "pure_text": "text",
        "ocr": "quad_boxes",
        "description_with_bboxes": "boxes",
        "phrase_grounding": "phrase_grounding",
        "bboxes": "region_proposals",
        "polygons": "polygons",
        "description_with_bboxes_or_polygons": "boxes_or_polygons",
    }
    for token, kind in REFERENCE.tasks_answer_post_processing_type.items():
        assert TASKS[token].output == formats[kind]


@pytest.mark.parametrize("token", REFERENCE_TASKS)
def test_prompts_match(token):
    task = get_task(token)
    if task.takes_input:
        text_input = " <loc_1><loc_2><loc_3><loc_4> a {green} car"
        assert task.build_prompt(text_input) == REFERENCE._construct_prompts(token + text_input)[0]
    else:
        assert task.build_prompt() == REFERENCE._construct_prompts(token)[0]


L4 = "<loc_1><loc_2><loc_3><loc_4>"


@given(token=st.sampled_from(REFERENCE_TASKS), text=garbage, size=image_sizes)
@settings(max_examples=300, deadline=None)
# Corner cases of the reference regexes: a leading location token skipped before the label, odd counts,
# labels broken by a line break, polygon groups without a label.
@example(token="<REFERRING_EXPRESSION_SEGMENTATION>", text=f"<loc_9><sep>{L4}<loc_5>", size=(640, 480))
@example(token="<REGION_TO_SEGMENTATION>", text="<loc_9><sep><sep><sep></s>", size=(640, 480))
@example(token="<REGION_TO_SEGMENTATION>", text=f"<poly>{L4}<loc_5></poly>x<poly>{L4}", size=(640, 480))
@example(token="<OD>", text=f"dog<loc_1><loc_2><loc_3>cat{L4}<loc_5>a\nb{L4}", size=(640, 480))
@example(token="<OCR_WITH_REGION>", text=f"a\nb{L4 * 2}{L4 * 3}", size=(640, 480))
@example(
    token="<OPEN_VOCABULARY_DETECTION>", text=f"<poly>{L4}</poly>cat<poly>{L4}<sep>{L4}</poly>", size=(9, 9)
)
def test_parse_matches_on_malformed_text(token, text, size):
    if token in TEXT_TASKS:
        # We also drop <pad> from plain answers, where transformers keeps it.
        text = text.replace("<pad>", "")
    assert_same(parse(token, text, size), reference_parse(REFERENCE, token, text, size), 1e-6)


@given(token=st.sampled_from(REFERENCE_TASKS), data=st.data())
@settings(max_examples=200, deadline=None)
def test_parse_matches_on_serialized_targets(token, data):
    task = get_task(token)
    size, annotation = data.draw(sized_annotations(task.output))
    text = f"<s>{task.serialize(annotation, size)}</s>"
    assert_same(parse(token, text, size), reference_parse(REFERENCE, token, text, size), 1e-6)
    # Stock transformers >= 5 truncates coordinates to ints; otherwise the results agree.
    assert_same(parse(token, text, size), reference_parse(STOCK, token, text, size), 1.0 + 1e-6)


def test_phrase_grounding_drops_banned_phrases():
    """The released processor configuration's banned grounding phrases, against transformers itself."""
    # Spot checks of the released list (transformers' convert_florence2_original_pytorch_to_hf.py).
    assert {"it", "I", "the image", "a", "each other", "a set", "none"} <= BANNED and len(BANNED) == 72
    locs = "<loc_10><loc_20><loc_300><loc_400>"
    texts = [
        f"<s>the image{locs} a man{locs}{locs} it{locs}</s>",
        f"<s>I{locs}the{locs}a dog{locs}The image{locs} it {locs}itself{locs}café{locs}</s>",
        f"<s>a group{locs}a group of people{locs}\n it{locs}other objects{locs}</s>",
    ]
    for text in texts:
        ours = parse("<CAPTION_TO_PHRASE_GROUNDING>", text, SIZE)
        assert_same(ours, reference_parse(REFERENCE, "<CAPTION_TO_PHRASE_GROUNDING>", text, SIZE), 1e-6)
        assert_same(ours, reference_parse(STOCK, "<CAPTION_TO_PHRASE_GROUNDING>", text, SIZE), 1.0 + 1e-6)
    assert parse("<CAPTION_TO_PHRASE_GROUNDING>", texts[0], SIZE)["labels"] == ["a man", "a man"]
    assert parse("<CAPTION_TO_PHRASE_GROUNDING>", texts[1], SIZE)["labels"] == ["a dog", "The image", "caf"]
    # Referring expressions and detection labels keep every phrase.
    assert parse("<REFERRING_EXPRESSION_COMPREHENSION>", texts[0], SIZE)["labels"] == [
        "the image",
        "a man",
        "a man",
        "it",
    ]
    assert parse("<OD>", texts[0], SIZE)["labels"] == ["the image", "a man", "a man", "it"]


def test_released_checkpoint_outputs():
    """Answers in the shape released Florence-2 checkpoints give."""
    size = (1000, 800)
    examples = {
        "<OD>": "<s>car<loc_54><loc_375><loc_906><loc_707>wheel<loc_706><loc_576><loc_849><loc_707><loc_149><loc_577><loc_284><loc_707></s>",
        "<CAPTION_TO_PHRASE_GROUNDING>": "<s>A green car<loc_52><loc_332><loc_932><loc_774>a yellow building<loc_0><loc_1><loc_997><loc_622></s>",
        "<REFERRING_EXPRESSION_SEGMENTATION>": "<s><loc_1><loc_2><loc_3><loc_4><loc_5><loc_6><sep><loc_7><loc_8><loc_9><loc_10><loc_11><loc_12></s><pad>",
        "<OPEN_VOCABULARY_DETECTION>": "<s>a green car<loc_52><loc_332><loc_932><loc_774></s>",
        "<OCR_WITH_REGION>": "<s>CUDA<loc_1><loc_2><loc_30><loc_2><loc_30><loc_9><loc_1><loc_9>NVIDIA<loc_5><loc_20><loc_40><loc_20><loc_40><loc_30><loc_5><loc_30></s>",
        "<REGION_PROPOSAL>": "<s><loc_1><loc_2><loc_3><loc_4><loc_5><loc_6><loc_7><loc_8></s>",
        "<REGION_TO_CATEGORY>": "<s>car<loc_52><loc_332><loc_932><loc_774></s>",
        "<CAPTION>": "<s>A green car parked in front of a yellow building.</s>",
    }
    for token, text in examples.items():
        assert_same(parse(token, text, size), reference_parse(REFERENCE, token, text, size), 1e-6)
    assert parse("<OD>", examples["<OD>"], size)["labels"] == ["car", "wheel", "wheel"]


# ------------------------------------------------------------------------------------- long outputs

LOCATION_PARSERS = ["<OD>", "<CAPTION_TO_PHRASE_GROUNDING>", "<REGION_PROPOSAL>", "<OCR_WITH_REGION>",
                    "<REGION_TO_SEGMENTATION>", "<OPEN_VOCABULARY_DETECTION>"]  # fmt: skip


def long_outputs(chars: int) -> dict[str, str]:
    """Garbled outputs of about `chars` characters, in the shapes the reference regexes backtrack on."""
    rng = random.Random(chars)
    mixed = []
    while sum(map(len, mixed)) < chars:
        mixed.append(rng.choice(["<loc_7>" * rng.randrange(1, 9), " a dog", "\n", "<poly>", "<sep>", " "]))
    locations = "".join(f"<loc_{k % 1000}>" for k in range(chars // 8))
    return {
        "mixed": "".join(mixed),
        "locations without labels": locations + "<poly>",
        "text without <": "a dog " * (chars // 6),
        "spaces, then a broken label": " " * chars + "a\nb" + L4,
    }


def test_long_outputs_parse_correctly():
    locations = long_outputs(50_000)["locations without labels"].removesuffix("<poly>")
    assert len(parse("<REGION_PROPOSAL>", locations, SIZE)["bboxes"]) == 6250 // 4
    assert parse("<OD>", "car" + locations, SIZE)["labels"] == ["car"] * (6250 // 4)
    assert parse("<REGION_TO_SEGMENTATION>", locations + "<poly>", SIZE) == {"polygons": [], "labels": []}
    assert len(parse("<REGION_TO_SEGMENTATION>", locations, SIZE)["polygons"][0][0]) == 6250
    outputs = long_outputs(50_000)
    for token in LOCATION_PARSERS:
        assert not any(parse(token, outputs["text without <"], SIZE).values())
        # A label broken by a line break is no label; the formats without labels read the locations anyway.
        broken = parse(token, outputs["spaces, then a broken label"], SIZE)
        assert any(broken.values()) == (token in ("<REGION_PROPOSAL>", "<REGION_TO_SEGMENTATION>"))
    # The mixed shape, small enough for the (quadratic) reference, agrees with it.
    text = long_outputs(3_000)["mixed"]
    for token in LOCATION_PARSERS:
        assert_same(parse(token, text, SIZE), reference_parse(REFERENCE, token, text, SIZE), 1e-6)


@pytest.mark.parametrize("shape", sorted(long_outputs(10)))
def test_parsing_time_grows_linearly(shape):
    """16 outputs of n characters and one of 16n take about as long (a quadratic parser: 16 times longer).

    A ratio of two timings taken side by side, best of five, with a 4x margin: no absolute time is assumed.
    """
    short, long = long_outputs(3_000)[shape], long_outputs(48_000)[shape]

    def best_of_five(texts):
        times = []
        for _ in range(5):
            start = time.perf_counter()
            for text in texts:
                for token in LOCATION_PARSERS:
                    parse(token, text, SIZE)
            times.append(time.perf_counter() - start)
        return min(times)

    assert best_of_five([long]) < 4 * best_of_five([short] * 16)
