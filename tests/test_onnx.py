"""ONNX export (`f2lightning export-onnx`) and onnxruntime generation (`OnnxFlorence2`): every graph computes what
PyTorch computes, greedy and beam-3 answers are `predict`'s tokens with its scores, the command runs end to end,
and a missing package names the extra that installs it."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    ForcedBOSTokenLogitsProcessor,
    ForcedEOSTokenLogitsProcessor,
    LogitsProcessorList,
    NoRepeatNGramLogitsProcessor,
)
from transformers.modeling_outputs import BaseModelOutput

from f2lightning.cli import main
from f2lightning.evaluation.samples import EvalSample
from f2lightning.inference.generation import GenerationSettings, generate
from f2lightning.inference.loading import load_model
from f2lightning.inference.onnx_export import INSTALL_HINT, MissingOnnxExtra, export_model
from f2lightning.inference.onnx_runtime import OnnxFlorence2, SearchSettings, process_scores
from f2lightning.inference.results import scored_result
from tests.helpers.weights import tiny_checkpoint

# The onnx extra (scripts/setup.sh installs it); the modules above import neither package until they run.
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

SIZE = (64, 48)
COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200)]
MAX_NEW_TOKENS = 32


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("checkpoint"))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, color in enumerate(COLORS):
        image = Image.new("RGB", SIZE, color)
        image.paste((255, 255, 255), (8 * i, 4, 8 * i + 20, 30))
        image.save(folder / f"{i:02d}.png")
        paths.append(str(folder / f"{i:02d}.png"))
    return paths


@pytest.fixture(scope="module")
def ending(checkpoint):
    """The tiny model with a bias on the end token: some captions end after a few tokens and others run to the
    limit, so the searches' bookkeeping of finished answers (greedy padding, beam hypotheses that finish on the
    way) is compared too, not only answers cut at the length limit."""
    model, processor = load_model(checkpoint)
    model.language_model.final_logits_bias[0, processor.tokenizer.eos_token_id] = 2.6
    return model, processor


@pytest.fixture(scope="module")
def runner(ending, tmp_path_factory) -> OnnxFlorence2:
    model, processor = ending
    return OnnxFlorence2(export_model(model, processor, tmp_path_factory.mktemp("onnx")), threads=1)


def _unpadded(ids: list[int], pad: int) -> list[int]:
    """PyTorch pads a batch's answers to its longest; onnxruntime's end at their end token."""
    ids = list(ids)
    while ids and ids[-1] == pad:
        ids.pop()
    return ids


def _pytorch_encoder(model, pixels, input_ids, attention_mask):
    inputs_embeds, mask = model.embed_inputs(pixels, input_ids, attention_mask)
    encoder = model.language_model.get_encoder()
    return encoder(inputs_embeds=inputs_embeds, attention_mask=mask).last_hidden_state, mask


@torch.no_grad()
def test_every_graph_computes_what_pytorch_computes(ending, runner) -> None:
    model, _ = ending
    torch.manual_seed(0)
    # Batch 3 and a 7-token prompt padded in two rows: none of the sizes the graphs were traced with.
    pixels = torch.randn(3, 3, 64, 64)
    input_ids = torch.randint(4, 300, (3, 7))
    attention_mask = torch.ones(3, 7, dtype=torch.long)
    attention_mask[0, -3:] = attention_mask[2, -1:] = 0

    features = runner.encode_image(pixels.numpy())
    np.testing.assert_allclose(features, model.encode_image(pixels).numpy(), atol=1e-4)
    # Height and width are dynamic axes: another resolution than the traced 64 px gives PyTorch's tokens too.
    larger = torch.randn(1, 3, 96, 96)
    np.testing.assert_allclose(
        runner.encode_image(larger.numpy()), model.encode_image(larger).numpy(), atol=1e-4
    )

    hidden, mask = runner.encode(features, input_ids.numpy(), attention_mask.numpy())
    expected_hidden, expected_mask = _pytorch_encoder(model, pixels, input_ids, attention_mask)
    np.testing.assert_allclose(hidden, expected_hidden.numpy(), atol=1e-4)
    np.testing.assert_array_equal(mask, expected_mask.numpy())

    # The decoder, one token at a time through the cache, against one teacher-forced pass over the whole prefix.
    tokens = torch.tensor([[2, 50, 60, 70], [2, 9, 9, 9], [2, 300, 1, 42]])
    expected = model.language_model(
        encoder_outputs=BaseModelOutput(last_hidden_state=expected_hidden),
        attention_mask=expected_mask,
        decoder_input_ids=tokens,
        use_cache=False,
    ).logits.numpy()
    logits, past, cross = runner.decode_first(tokens[:, :1].numpy(), hidden, mask)
    np.testing.assert_allclose(logits, expected[:, 0], atol=1e-4)
    for step in range(1, tokens.shape[1]):
        logits, past = runner.decode_step(tokens[:, step : step + 1].numpy(), mask, past, cross)
        assert past[0].shape[2] == step + 1
        np.testing.assert_allclose(logits, expected[:, step], atol=1e-4)


@pytest.mark.parametrize("ngram", [0, 3])
@pytest.mark.parametrize("forced_bos", [None, 0])
def test_the_logits_processors_are_transformers(ngram, forced_bos) -> None:
    """Every step of an answer, with the settings' processors in transformers' order; forced BOS is checked here
    only, as our models' generation settings do not set it."""
    max_new_tokens, vocab, eos = 7, 5, 2
    settings = SearchSettings(1, max_new_tokens, ngram, forced_bos, eos, False, 1.0)
    processors = LogitsProcessorList(
        ([NoRepeatNGramLogitsProcessor(ngram)] if ngram else [])
        + ([ForcedBOSTokenLogitsProcessor(forced_bos)] if forced_bos is not None else [])
        + [ForcedEOSTokenLogitsProcessor(1 + max_new_tokens, eos)]
    )
    generator = torch.Generator().manual_seed(0)
    # Few distinct tokens, so that n-grams repeat.
    sequences = torch.randint(0, 3, (6, 1 + max_new_tokens), generator=generator)
    for cur_len in range(1, 1 + max_new_tokens):
        scores = torch.randn(6, vocab, generator=generator)
        expected = processors(sequences[:, :cur_len], scores.clone()).numpy()
        got = process_scores(sequences[:, :cur_len].numpy(), scores.numpy().copy(), settings)
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("num_beams", [1, 3])
@pytest.mark.parametrize("task", ["<OD>", "<CAPTION>"])
def test_onnxruntime_answers_are_the_tokens_and_scores_of_predict(
    ending, runner, images, task, num_beams
) -> None:
    model, processor = ending
    settings = GenerationSettings(
        batch_size=3, num_beams=num_beams, max_new_tokens=MAX_NEW_TOKENS, num_workers=0, progress=False
    )
    samples = [EvalSample(path, SIZE, None, None, path) for path in images]
    expected = generate(model, processor, task, samples, settings, with_logprobs=True)
    # Other batches than PyTorch's (2 vs 3): answers must not depend on the batch either.
    got = runner.generations(images, task, num_beams=num_beams, max_new_tokens=MAX_NEW_TOKENS, batch_size=2)
    lengths = []
    for reference, answer in zip(expected, got, strict=True):
        ids = _unpadded(reference.token_ids, processor.tokenizer.pad_token_id)
        assert answer.token_ids == ids
        assert answer.text == processor.tokenizer.decode(
            ids, skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        assert answer.token_logprobs == pytest.approx(reference.token_logprobs[: len(ids)], abs=1e-4)
        lengths.append(len(ids))
    if task == "<CAPTION>":
        assert len(set(lengths)) > 1, f"every caption has {lengths[0]} tokens: finished answers went untested"

    scored = runner.generate(images, task, num_beams=num_beams, max_new_tokens=MAX_NEW_TOKENS)
    for reference, answer in zip(expected, scored, strict=True):
        reference = scored_result(task, reference, SIZE, processor)
        assert answer.score == pytest.approx(reference.score, abs=1e-4)
        if isinstance(reference.result, dict):
            assert answer.result.pop("scores") == pytest.approx(reference.result.pop("scores"), abs=1e-4)
        assert answer.result == reference.result


def test_the_cli_exports_a_checkpoint_that_answers_like_pytorch(checkpoint, images, tmp_path, capsys) -> None:
    out = tmp_path / "onnx"
    assert main(["export-onnx", str(checkpoint), "-o", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    for name in ("image_encoder", "encoder", "decoder_first", "decoder"):
        assert (out / f"{name}.onnx").is_file()
    assert (out / "tokenizer.json").is_file() and (out / "onnx_config.json").is_file()

    model, processor = load_model(checkpoint)
    settings = GenerationSettings(batch_size=5, num_beams=3, max_new_tokens=8, num_workers=0, progress=False)
    samples = [EvalSample(path, SIZE, None, None, path) for path in images]
    expected = [
        _unpadded(g.token_ids, processor.tokenizer.pad_token_id)
        for g in generate(model, processor, "<OD>", samples, settings)
    ]
    got = OnnxFlorence2(out, threads=1).generations(images, "<OD>", num_beams=3, max_new_tokens=8)
    assert [g.token_ids for g in got] == expected


def test_a_missing_onnx_package_names_the_extra(checkpoint, runner, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # an import of a name mapped to None fails
    assert main(["export-onnx", str(checkpoint), "-o", str(tmp_path / "onnx")]) == 2
    assert INSTALL_HINT in capsys.readouterr().err and not (tmp_path / "onnx").exists()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingOnnxExtra, match=r'onnxruntime: pip install "f2lightning\[onnx\]"'):
        OnnxFlorence2(runner.path)
