"""Dataset statistics (paper §5, Tables 2-3): exact counts on a hand-made record set, the semantic columns
from hand-parsed spaCy Docs (the English pipeline cannot be installed here), the files, `f2lightning stats`."""

from __future__ import annotations

import json

import pytest
from spacy.tokens import Doc

from f2lightning.cli import main
from f2lightning.data.records import write_records
from f2lightning.data.schema import Grounding, OcrLine, Phrase, Record, Region, SourcedText, VqaPair
from f2lightning.engine.stats import FIGURES, dataset_statistics, statistics_markdown, write_statistics
from tests.helpers.spacy_docs import SENTENCES

# The texts of `corpus()`, each parsed once by the injected parser.
CORPUS_TEXTS = ["A dog.", "The cat sleeps.", "A man riding a horse.", "A brown dog runs on the grass."]
QUAD = [0, 0, 10, 0, 10, 5, 0, 5]


def corpus() -> list[Record]:
    """Three images: a.png in two records (human annotations, a detector's box; then more VQA), b.png with
    generated annotations only, c.png with nothing."""
    return [
        Record(
            image="a.png",
            width=100,
            height=100,
            texts={"brief": ["A dog.", "The cat sleeps."], "detailed": ["A brown dog runs on the grass."]},
            regions=[
                Region([0, 0, 50, 50], category="dog"),  # a quarter of the image
                Region([0, 0, 20, 20], category="cat", source="detector", score=0.9),  # 0.04
            ],
            groundings=[
                Grounding(
                    "A dog and a cat.", [Phrase((0, 5), [[0, 0, 50, 50]]), Phrase((10, 15), [[0, 0, 20, 20]])]
                )
            ],
            ocr=[OcrLine(QUAD, "EXIT")],
            vqa=[VqaPair("What animal?", ["dog"])],
        ),
        Record(
            image="b.png",
            width=200,
            height=100,
            texts={"brief": [SourcedText("A man riding a horse.", source="captioner", score=0.8)]},
            regions=[
                Region([0, 0, 200, 100], category="car", source="detector", score=0.7)
            ],  # the whole image
            ocr=[
                OcrLine(QUAD, "OPEN", source="ocr-model", score=0.9),
                OcrLine(QUAD, "24/7", source="ocr-model"),
            ],
        ),
        Record(
            image="a.png",
            width=100,
            height=100,
            vqa=[VqaPair("Is it day?", ["yes"]), VqaPair("Color?", ["brown"])],
        ),
        Record(image="c.png", width=10, height=10),
    ]


def row(images: int, annotations: int, per_image: float) -> dict:
    return {"images": images, "annotations": annotations, "per_image": per_image}


def test_table_2_counts():
    stats = dataset_statistics(corpus())
    assert stats["images"] == 3  # a.png counted once
    assert stats["annotations"] == {
        "text_brief": row(2, 3, 1.5),
        "text_detailed": row(1, 1, 1.0),
        "text_more_detailed": row(0, 0, 0.0),
        "region_text": row(2, 3, 1.5),
        "grounding_text": row(1, 1, 1.0),
        "grounding_phrase": row(1, 2, 2.0),
        "ocr": row(2, 3, 1.5),
        "vqa": row(1, 3, 3.0),  # both records of a.png
    }


def test_text_lengths_and_region_sizes():
    stats = dataset_statistics(corpus())
    assert stats["texts"] == {
        "brief": {"texts": 3, "mean_words": pytest.approx(10 / 3), "length_counts": {"2": 1, "3": 1, "5": 1}},
        "detailed": {"texts": 1, "mean_words": 7.0, "length_counts": {"7": 1}},
    }
    regions = stats["regions"]
    assert regions["count"] == 3
    assert regions["mean_relative_area"] == pytest.approx((0.25 + 0.04 + 1.0) / 3)
    assert regions["area_histogram"] == {
        "edges": [0.0, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0],
        "counts": [0, 0, 1, 0, 0, 1, 1],  # 0.04, 0.25 (a bin's lower edge is in it), 1.0 (the last bin's too)
    }
    assert regions["per_image_counts"] == {"0": 1, "1": 1, "2": 1}  # c.png, b.png, a.png


def test_semantic_columns_from_an_injected_parser():
    parsed_texts = []

    def parse(text: str) -> Doc:
        parsed_texts.append(text)
        return SENTENCES[text]

    stats = dataset_statistics(corpus(), parse)
    brief, detailed = stats["texts"]["brief"], stats["texts"]["detailed"]
    # "A dog." / "The cat sleeps." / "A man riding a horse.": nouns 1, 1, 2; verbs 0, 1, 1; no adjective
    assert (brief["mean_nouns"], brief["mean_verbs"], brief["mean_adjectives"]) == pytest.approx(
        (4 / 3, 2 / 3, 0)
    )
    assert (detailed["mean_nouns"], detailed["mean_verbs"], detailed["mean_adjectives"]) == (2.0, 1.0, 1.0)
    assert stats["semantics"] is True and stats["notes"] == []
    # each text once, though the per-source tables read it again
    assert sorted(parsed_texts) == sorted(CORPUS_TEXTS)
    assert "| brief | 3 | 3.33 | 1.33 | 0.67 | 0.00 |" in statistics_markdown(stats)


def test_without_a_parser_the_semantic_columns_are_left_out_with_a_note():
    stats = dataset_statistics(corpus())
    assert "mean_nouns" not in stats["texts"]["brief"] and stats["semantics"] is False
    (note,) = stats["notes"]
    assert 'pip install "f2lightning[engine]"' in note and "python -m spacy download en_core_web_sm" in note
    markdown = statistics_markdown(stats)
    assert "| Granularity | Texts | Mean words |\n" in markdown and f"Note: {note}" in markdown


def test_split_by_source():
    by_source = dataset_statistics(corpus())["by_source"]
    assert list(by_source) == ["human", "captioner", "detector", "ocr-model"]
    human = by_source["human"]
    assert human["images"] == 1
    assert human["annotations"]["text_brief"] == row(1, 2, 2.0)
    assert human["annotations"]["vqa"] == row(1, 3, 3.0)
    assert human["regions"]["count"] == 1 and human["regions"]["mean_relative_area"] == 0.25
    assert by_source["captioner"]["annotations"]["text_brief"] == row(1, 1, 1.0)
    assert by_source["captioner"]["regions"]["count"] == 0
    detector = by_source["detector"]
    assert detector["images"] == 2 and detector["annotations"]["region_text"] == row(2, 2, 1.0)
    assert detector["regions"]["mean_relative_area"] == pytest.approx(0.52)
    assert detector["texts"] == {}
    assert by_source["ocr-model"]["annotations"]["ocr"] == row(1, 2, 2.0)
    markdown = statistics_markdown(dataset_statistics(corpus()))
    lines = markdown.splitlines()
    assert "| Annotation type | human | captioner | detector | ocr-model |" in lines
    assert "| Region-text pairs | 1 (1) | 0 | 2 (2) | 0 |" in lines  # annotations (images)
    assert "| captioner | brief | 1 | 5.00 |" in lines and "| detector | 2 | 0.5200 |" in lines


def test_one_source_is_not_split():
    assert "by_source" not in dataset_statistics(corpus()[2:])


def test_markdown_in_the_papers_shape():
    markdown = statistics_markdown(dataset_statistics(corpus()))
    lines = markdown.splitlines()
    start = lines.index("| Annotation type | Images | Annotations | Annotations per image |")
    assert lines[start + 2 : start + 10] == [
        "| Text (brief) | 2 | 3 | 1.50 |",
        "| Text (detailed) | 1 | 1 | 1.00 |",
        "| Text (more detailed) | 0 | 0 | 0.00 |",
        "| Region-text pairs | 2 | 3 | 1.50 |",
        "| Text-phrase-region: texts | 1 | 1 | 1.00 |",
        "| Text-phrase-region: phrases | 1 | 2 | 2.00 |",
        "| OCR lines | 2 | 3 | 1.50 |",
        "| VQA pairs | 1 | 3 | 3.00 |",
    ]
    assert "| brief | 3 | 3.33 |" in lines and "| 0.25–0.5 | 1 |" in lines
    assert "3 region(s); mean area relative to the image: 0.4300." in lines and "3 image(s)." in lines


def test_files_are_written(tmp_path):
    stats = dataset_statistics(corpus(), SENTENCES.__getitem__)
    written = write_statistics(stats, tmp_path / "stats")
    assert [p.name for p in written] == ["statistics.json", "statistics.md", *FIGURES]
    assert json.loads((tmp_path / "stats" / "statistics.json").read_text()) == stats
    assert (tmp_path / "stats" / "statistics.md").read_text() == statistics_markdown(stats)
    for name in FIGURES:
        assert (tmp_path / "stats" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_files_of_a_corpus_without_texts_or_regions(tmp_path):
    stats = dataset_statistics([Record(image="c.png", width=10, height=10)])
    for path in write_statistics(stats, tmp_path):
        assert path.stat().st_size > 0
    assert "No texts." in statistics_markdown(stats) and "No regions." in statistics_markdown(stats)


def test_cli_stats(tmp_path, capsys):
    path = tmp_path / "corpus.jsonl"
    write_records(corpus(), path)
    with path.open("a") as f:
        f.write("{not json\n")
    out = tmp_path / "stats"
    assert main(["stats", str(path), "-o", str(out), "--spacy-model", "f2l_no_such_pipeline"]) == 0
    printed = capsys.readouterr().out
    assert "| Text (brief) | 2 | 3 | 1.50 |" in printed
    assert "python -m spacy download f2l_no_such_pipeline" in printed  # the note, not an error
    assert "records not read: dropped 1 (malformed_json: 1)" in printed
    stats = json.loads((out / "statistics.json").read_text())
    assert stats["annotations"]["vqa"] == row(1, 3, 3.0) and stats["semantics"] is False
    assert all((out / name).stat().st_size > 0 for name in ("statistics.md", *FIGURES))

    assert main(["stats", str(path), "-o", str(out), "--no-semantics"]) == 0
    assert "semantic columns left out: --no-semantics was given" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:  # one or the other
        main(["stats", str(path), "-o", str(out), "--no-semantics", "--spacy-model", "x"])
    assert exit_.value.code == 2
