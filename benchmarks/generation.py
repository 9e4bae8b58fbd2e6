"""Generation: images/s of beam-3 generation for <OD> and <CAPTION>, ours vs transformers' `generate`.

Equal-length answers (`--mix equal`, the default): four contestants on the same images, prompts, weights
and generation settings (our processor's per-task kwargs, with exactly `--max-new-tokens` new tokens, or the
task's own budget where smaller: a fresh random model would otherwise end a caption after one token, so the
decoding work would depend on the init, not the task):

* ours, continuous (`f2lightning.inference.engine`, what predict / evaluate run: a running batch that finished
  requests leave; here every answer has the same length, so nobody leaves early);
* ours, batched (`Florence2.generate`: the image + prompt are encoded once, beams reuse the encoder output);
* reference, batched (`Florence2ForConditionalGeneration.generate` on the same batch);
* reference one image at a time, as the public inference examples do.

The outputs are checked to be token-identical (`same_output` in the JSON: ours batched and continuous against
the reference batched). A fresh init's tokens hardly depend on the input, so this is a sanity check;
tests/test_model_equivalence.py and tests/test_generation_engine.py prove the equivalence on weights under
which they do. With `--questions-per-image k` each image is asked k questions (for REC / VQA the synthetic
records' own expressions / questions), as RefCOCO and VQA evaluation do: ours encodes each image of the batch
once (`image_index`), the reference gets a copy per question. Rates then count questions (the JSON keeps the
`images_per_s` names).

Realistic lengths (`--mix coco`, tasks `<OD>` and `<DENSE_REGION_CAPTION>` by default): a stream of
`--requests` synthetic scenes whose object counts are drawn from COCO 2017 val's per-image distribution
(`COCO_VAL2017_OBJECTS` below), each answer as long as its objects need: `TOKENS_PER_OBJECT` tokens per
object plus EOS. A random model's answer length does not follow the image, so every request gets its own
budget L = 1 + tokens per object x objects, with EOS suppressed before its last token and forced at it, the
same rule on both sides. Ours gives each request `max_new_tokens=L, min_new_tokens=L-1` (the engine's own
per-request settings, exactly transformers' `min_new_tokens` and forced EOS); transformers' batched
`generate` runs each batch of `--batch-size` consecutive requests to its longest L, with `AnswerLengths`, a
LogitsProcessor applying each row's own L. Ours runs the same stream through a running batch of
`--batch-size` requests (x beams rows), encoding the same batches. The table adds the share of decoder rows
that were padding (rows of answers already finished, still computed): for the reference, a forward hook on
its decoder counts the rows per call, against the steps each request needs alone (the engine's
`Finished.steps`).

    python -m benchmarks.generation --preset tiny
    python -m benchmarks.generation --preset base --batch-size 4 --max-new-tokens 16
    python -m benchmarks.generation --preset tiny --batch-size 16 --tasks "<REFERRING_EXPRESSION_COMPREHENSION>" \
        --questions-per-image 4 --max-new-tokens 8
    python -m benchmarks.generation --preset base --batch-size 4 --breakdown
    python -m benchmarks.generation --preset tiny --mix coco --batch-size 16 --requests 64 --num-beams 3 1

`--breakdown` also times our parts alone: the image encoder, BART's encoder, and the decoder's forward passes
over batch x beams rows with a KV cache and no search around them. Their sum is a floor under any beam-search
loop that runs this model's computation, so `reference / floor` is the most such a loop could gain over the
reference's batched `generate` on this machine.
"""

from __future__ import annotations

import argparse
import inspect
import math
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import BartForConditionalGeneration, LogitsProcessor, LogitsProcessorList
from transformers.modeling_outputs import BaseModelOutput

from benchmarks.common import (
    Side,
    autocast,
    build_ours,
    environment,
    interleave,
    print_json,
    print_table,
    reference_from,
    reference_inputs,
    synthetic_datamodule,
)
from f2lightning.data.expand import task_annotations
from f2lightning.data.records import read_records
from f2lightning.data.schema import Record
from f2lightning.data.synthetic import BACKGROUND, PALETTE, SHAPES, SyntheticConfig, render_scene
from f2lightning.images import load_image
from f2lightning.inference.engine import GenerationEngine, RequestBatch, Search
from f2lightning.processor import share_images
from f2lightning.tasks import get_task

# transformers 5.2x renamed the decoder cache argument and output field (`past_key_values` -> `cache`).
_CACHE = (
    "cache"
    if "cache" in inspect.signature(BartForConditionalGeneration.forward).parameters
    else "past_key_values"
)

# Objects per image in COCO 2017 val (5000 images), shaped to the per-image annotation counts of
# instances_val2017.json as published: 36,781 instances (mean 7.36 per image), 48 images without any,
# median 4, 43 % of images with 0-3 objects and a long tail beyond 20 (the most is 63). The counts below are a
# histogram with those statistics (mean 7.32), not recomputed from the file (not available offline here).
# Keys: an object count, or (lowest, highest) for a tail bucket whose counts are drawn uniformly.
COCO_VAL2017_OBJECTS: dict[int | tuple[int, int], int] = {
    0: 48, 1: 880, 2: 690, 3: 508, 4: 415, 5: 338, 6: 278, 7: 233, 8: 198, 9: 168, 10: 148, 11: 126, 12: 108,
    13: 94, 14: 82, 15: 72, 16: 63, 17: 56, 18: 49, 19: 43, 20: 38, (21, 25): 155, (26, 30): 92, (31, 40): 76,
    (41, 63): 42,
}  # fmt: skip
# Answer tokens per object: an <OD> object is a category name (about one token) and 4 location tokens; a dense
# region caption a short phrase (about 4 tokens) and 4 location tokens.
TOKENS_PER_OBJECT = {"<OD>": 5, "<DENSE_REGION_CAPTION>": 8}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="tiny", choices=["tiny", "base", "large"])
    parser.add_argument("--image-size", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions per task")
    parser.add_argument("--num-beams", type=int, nargs="+", default=[3], help="one run per value")
    parser.add_argument(
        "--max-new-tokens", type=int, default=24, help="tokens each answer decodes (--mix equal)"
    )
    parser.add_argument(
        "--tasks", nargs="+", default=None, help="default: <OD> <CAPTION> (coco: <OD> <DENSE_REGION_CAPTION>)"
    )
    parser.add_argument(
        "--mix", choices=["equal", "coco"], default="equal",
        help="equal: every answer --max-new-tokens long; coco: lengths from COCO's objects per image",
    )  # fmt: skip
    parser.add_argument("--requests", type=int, default=None, help="--mix coco: requests (default 4 batches)")
    parser.add_argument("--seed", type=int, default=0, help="--mix coco: object counts and scenes")
    parser.add_argument("--questions-per-image", type=int, default=1, help="questions asked about each image")
    parser.add_argument("--vocab-size", type=int, default=None, help="default: the preset's")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--compile", action="store_true", help="ours only: torch.compile the image encoder")
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also time our parts alone and the floor they put under any beam-search loop",
    )
    return parser.parse_args(argv)


def questions(task: str, records: list[Record], count: int, per_image: int) -> list[tuple[str, str | None]]:
    """`count` (image, text input) pairs, `per_image` in a row about each image. Tasks with a text input use the
    record's own inputs (REC expressions, VQA questions), taking only records with enough of them."""
    takes_input = get_task(task).takes_input
    pairs: list[tuple[str, str | None]] = []
    for record in records:
        inputs = (
            [a.text_input for a in task_annotations(record, [task])] if takes_input else [None] * per_image
        )
        if len(inputs) >= per_image:
            pairs += [(record.image, text) for text in inputs[:per_image]]
        if len(pairs) >= count:
            return pairs[:count]
    raise ValueError(f"the synthetic records do not give {count} {task} questions, {per_image} per image")


def bench_task(
    task: str,
    beams: int,
    model,
    reference,
    processor,
    pairs: list[tuple[str, str | None]],
    args: argparse.Namespace,
    device: torch.device,
) -> dict[str, Any]:
    config = model.config
    images = [load_image(path) for path, _ in pairs]
    batch = processor(images, [task] * len(images), text_inputs=[text for _, text in pairs])
    firsts, image_index = share_images([path for path, _ in pairs])
    copies = batch["pixel_values"].to(device)  # one per question: what the reference needs
    pixels, image_index = copies[firsts], image_index.to(device)
    input_ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    kwargs = processor.generation_kwargs(task, beams)
    kwargs["max_new_tokens"] = kwargs["min_new_tokens"] = min(kwargs["max_new_tokens"], args.max_new_tokens)
    ref_inputs = reference_inputs(input_ids, mask, config.num_image_tokens, config.image_token_id)
    outputs: dict[str, Any] = {}
    search = Search.from_kwargs(kwargs, model.language_model.generation_config)
    requests = RequestBatch(
        list(range(len(images))), [search] * len(images), pixels, input_ids, mask, image_index
    )

    def ours_continuous(_: object) -> None:
        engine = GenerationEngine(model, len(images) * beams, beams, bf16=args.bf16)
        outputs["continuous"] = {a.key: a.token_ids for done in engine.run([requests]) for a in done}

    def ours(_: object) -> None:
        with torch.inference_mode(), autocast(device, args.bf16):
            outputs["ours"] = model.generate(pixels, input_ids, mask, image_index, **kwargs)

    def reference_batched(_: object) -> None:
        with torch.inference_mode(), autocast(device, args.bf16):
            outputs["reference"] = reference.generate(**ref_inputs, pixel_values=copies, **kwargs)

    def reference_one_by_one(_: object) -> None:
        # Public examples: one image, unpadded prompt, one generate call each.
        with torch.inference_mode(), autocast(device, args.bf16):
            for i in range(len(images)):
                length = int(mask[i].sum())
                single = reference_inputs(
                    input_ids[i : i + 1, :length],
                    mask[i : i + 1, :length],
                    config.num_image_tokens,
                    config.image_token_id,
                )
                reference.generate(**single, pixel_values=copies[i : i + 1], **kwargs)

    sides = [
        Side("ours, continuous", ours_continuous),
        Side("ours, batched", ours),
        Side("reference, batched", reference_batched),
        Side("reference, one by one", reference_one_by_one),
    ]
    interleave(sides, list(range(args.repeats + 1)), device, warmup=1)
    eos, pad = _special_ids(reference)
    answers = [_answer(row, eos, pad) for row in outputs["reference"].tolist()]
    same_continuous = [outputs["continuous"][i] for i in range(len(images))] == answers
    same = torch.equal(outputs["ours"], outputs["reference"]) and same_continuous
    rows = [[s.name, len(images) / s.median, s.median / sides[0].median] for s in sides]
    print_table(
        f"{task} beam-{beams} generation ({args.preset}, {args.image_size}px, batch {len(images)}, "
        f"{len(images) / len(firsts):.1f} questions per image, "
        f"{kwargs['max_new_tokens']} new tokens, same output: {same})",
        ["side", "images/s" if args.questions_per_image == 1 else "questions/s", "ours is faster by"],
        rows,
    )
    breakdown = {}
    if args.breakdown:
        seconds = time_parts(model, pixels, input_ids, mask, image_index, kwargs, args, device)
        floor = sum(seconds.values())
        breakdown = {
            "breakdown_s": {**seconds, "floor": floor},
            "reference_over_floor": sides[1].median / floor,
        }
        print_table(
            "where our time goes (medians; floor = the sum of the model's own passes)",
            ["part", "s"],
            [[name, value] for name, value in breakdown["breakdown_s"].items()]
            + [["reference batched / floor", breakdown["reference_over_floor"]]],
        )
    continuous, ours_batched, batched, one_by_one = (side.median for side in sides)
    return {
        **breakdown,
        "ours_continuous_images_per_s": len(images) / continuous,
        "ours_images_per_s": len(images) / ours_batched,
        "reference_batched_images_per_s": len(images) / batched,
        "reference_one_by_one_images_per_s": len(images) / one_by_one,
        "continuous_speedup_vs_reference_batched": batched / continuous,
        "speedup_vs_reference_batched": batched / ours_batched,
        "speedup_vs_reference_one_by_one": one_by_one / ours_batched,
        "same_output": same,
    }


def _special_ids(reference) -> tuple[int, int]:
    config = reference.generation_config
    eos = config.eos_token_id
    return (eos[0] if isinstance(eos, list) else eos), config.pad_token_id


def _answer(row: list[int], eos: int, pad: int) -> list[int]:
    """One row of a batched `generate` output as the request's own answer: without the decoder start token and
    without the padding after its EOS (the batch runs until its longest answer ends)."""
    ids = row[1:]
    if eos in ids:
        return ids[: ids.index(eos) + 1]
    while ids and ids[-1] == pad:
        ids.pop()
    return ids


# ---------------------------------------------------------------------------------------------- coco mix
def object_counts(rng: np.random.Generator, count: int) -> list[int]:
    """`count` object counts drawn from `COCO_VAL2017_OBJECTS`."""
    keys = list(COCO_VAL2017_OBJECTS)
    weights = np.array([COCO_VAL2017_OBJECTS[k] for k in keys], dtype=float)
    draws = rng.choice(len(keys), size=count, p=weights / weights.sum())
    counts = []
    for draw in draws:
        key = keys[draw]
        counts.append(int(rng.integers(key[0], key[1] + 1)) if isinstance(key, tuple) else key)
    return counts


def coco_scene(index: int, objects: int, size: int, seed: int) -> Image.Image:
    """A synthetic scene with `objects` shapes (`f2lightning.data.synthetic`; smaller shapes for more objects,
    as many as fit without overlap, at most one per colour and shape), or an empty one for 0 objects."""
    if objects == 0:
        return Image.new("RGB", (size, size), BACKGROUND)
    drawn = min(objects, len(SHAPES) * len(PALETTE))
    largest = min(0.45, 0.9 / math.sqrt(drawn))
    config = SyntheticConfig(
        image_size=size, min_shapes=drawn, max_shapes=drawn, shapes=SHAPES, colors=tuple(PALETTE),
        min_shape_size=largest / 2, max_shape_size=largest, max_text_lines=0,
    )  # fmt: skip
    return render_scene(index, seed, config)[0]


class AnswerLengths(LogitsProcessor):
    """Row `r` of a batched `generate` (request `r // beams`) answers exactly `lengths[r]` tokens: EOS
    suppressed before its last token and forced at it, as `min_new_tokens=L-1` and the forced EOS at
    `max_new_tokens=L` do for a request alone. Rows past their length are left alone (they have finished)."""

    def __init__(self, lengths: list[int], beams: int, eos: int, device: torch.device) -> None:
        self.lengths = torch.tensor(lengths, device=device).repeat_interleave(beams)
        self.eos = eos

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids.shape[1] - 1  # the decoder start token is not generated
        scores = scores.clone()
        scores[:, self.eos] = torch.where(generated < self.lengths - 1, -math.inf, scores[:, self.eos])
        last = (generated == self.lengths - 1)[:, None]
        only_eos = torch.full_like(scores, -math.inf)
        only_eos[:, self.eos] = 0.0
        return torch.where(last, only_eos, scores)


class RowCounter:
    """Decoder rows and calls (steps) of a module: a forward pre-hook adding each call's batch size."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.rows = self.calls = 0
        module.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, _module, args, kwargs) -> None:
        tokens = kwargs.get("input_ids", args[0] if args else None)
        if tokens is None:
            tokens = kwargs["inputs_embeds"]
        self.rows += tokens.shape[0]
        self.calls += 1


def bench_mix(
    task: str, beams: int, model, reference, processor, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    """`--mix coco`: the request stream through ours (continuous) and the reference (batched); see the module
    docstring."""
    config, batch_size = model.config, args.batch_size
    image_token = config.image_token_id
    count = args.requests or 4 * batch_size
    objects = object_counts(np.random.default_rng(args.seed), count)
    images = [coco_scene(i, n, args.image_size, args.seed) for i, n in enumerate(objects)]
    lengths = [min(get_task(task).max_new_tokens, 1 + TOKENS_PER_OBJECT[task] * n) for n in objects]
    batch = processor(images, [task] * count)
    pixels = batch["pixel_values"].to(device)
    input_ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    kwargs = processor.generation_kwargs(task, beams)
    kwargs.pop("max_new_tokens")
    ngram = kwargs.get("no_repeat_ngram_size", 0)
    chunks = [list(range(start, min(start + batch_size, count))) for start in range(0, count, batch_size)]
    eos, pad = _special_ids(reference)
    counter = RowCounter(reference.model.language_model.decoder)
    outputs: dict[str, Any] = {}

    def ours(chunks_: list[list[int]]) -> None:
        engine = GenerationEngine(model, batch_size * beams, beams, bf16=args.bf16)
        stream = (
            RequestBatch(chunk, [Search(lengths[i], beams, ngram, lengths[i] - 1) for i in chunk],
                         pixels[chunk], input_ids[chunk], mask[chunk])
            for chunk in chunks_
        )  # fmt: skip
        outputs["ours"] = {a.key: a for done in engine.run(stream) for a in done}
        outputs["ours_stats"] = engine.stats

    def reference_batched(chunks_: list[list[int]]) -> None:
        counter.rows, counter.calls, answers = 0, 0, {}
        with torch.inference_mode(), autocast(device, args.bf16):
            for chunk in chunks_:
                rule = AnswerLengths([lengths[i] for i in chunk], beams, eos, device)
                prompts = reference_inputs(
                    input_ids[chunk], mask[chunk], config.num_image_tokens, image_token
                )
                output = reference.generate(
                    **prompts, pixel_values=pixels[chunk], max_new_tokens=max(lengths[i] for i in chunk),
                    logits_processor=LogitsProcessorList([rule]), **kwargs,
                )  # fmt: skip
                answers.update(zip(chunk, (_answer(row, eos, pad) for row in output.tolist()), strict=True))
        outputs["reference"], outputs["reference_rows"], outputs["reference_steps"] = (
            answers,
            counter.rows,
            counter.calls,
        )

    sides = [Side("ours, continuous", ours), Side("reference, batched", reference_batched)]
    # Warm-up on two requests, which run every code path once: at base a pass over the stream takes minutes.
    interleave(sides, [[chunks[0][:2]]] + [chunks] * args.repeats, device, warmup=1)
    ours_answers = outputs["ours"]
    same = all(ours_answers[i].token_ids == outputs["reference"][i] for i in range(count))
    live = sum(ours_answers[i].steps * beams for i in range(count))
    stats = outputs["ours_stats"]
    padding = {
        "ours, continuous": stats.padding_share,
        "reference, batched": 1 - live / outputs["reference_rows"],
    }
    computed = {"ours, continuous": stats.rows_computed, "reference, batched": outputs["reference_rows"]}
    print_table(
        f"{task} beam-{beams}, COCO-like length mix ({args.preset}, {args.image_size}px, {count} requests, "
        f"running batch / batch {batch_size}; {np.mean(objects):.1f} objects per image, answers "
        f"{min(lengths)}-{max(lengths)} tokens (mean {np.mean(lengths):.0f}); same output: {same})",
        ["side", "images/s", "ours is faster by", "padding rows", "decoder rows"],
        [[s.name, count / s.median, s.median / sides[0].median, f"{100 * padding[s.name]:.1f} %",
          computed[s.name]] for s in sides],
    )  # fmt: skip
    return {
        "requests": count,
        "mean_objects": float(np.mean(objects)),
        "answer_tokens": {"min": min(lengths), "mean": float(np.mean(lengths)), "max": max(lengths)},
        "ours_continuous_images_per_s": count / sides[0].median,
        "reference_batched_images_per_s": count / sides[1].median,
        "speedup_vs_reference_batched": sides[1].median / sides[0].median,
        "padding_share": {"ours": padding["ours, continuous"], "reference": padding["reference, batched"]},
        "decoder_rows": {"ours": computed["ours, continuous"], "reference": computed["reference, batched"]},
        "decoder_steps": {"ours": stats.steps, "reference": outputs["reference_steps"]},
        "same_output": same,
    }


def time_parts(
    model,
    pixels,
    input_ids,
    mask,
    image_index,
    kwargs: dict[str, Any],
    args: argparse.Namespace,
    device: torch.device,
) -> dict[str, float]:
    """Median seconds of our image encoder, BART encoder and bare decoder passes (`--breakdown`)."""
    language = model.language_model
    beams, steps = kwargs["num_beams"], kwargs["max_new_tokens"]
    with torch.inference_mode(), autocast(device, args.bf16):
        embeds, embeds_mask = model.embed_inputs(pixels, input_ids, mask, image_index)

        def encode() -> torch.Tensor:
            return language.get_encoder()(inputs_embeds=embeds, attention_mask=embeds_mask).last_hidden_state

        encoded = encode()
    encoded = BaseModelOutput(last_hidden_state=encoded.repeat_interleave(beams, 0))
    rows_mask = embeds_mask.repeat_interleave(beams, 0)

    def decode() -> None:
        tokens, cache = (
            torch.full((len(rows_mask), 1), language.config.decoder_start_token_id, device=device),
            None,
        )
        for _ in range(steps):
            output = language(
                encoder_outputs=encoded,
                attention_mask=rows_mask,
                decoder_input_ids=tokens,
                use_cache=True,
                **{_CACHE: cache},
            )
            cache, tokens = getattr(output, _CACHE), output.logits[:, -1:].argmax(-1)

    def inference(run) -> Any:
        def unit(_: object) -> None:
            with torch.inference_mode(), autocast(device, args.bf16):
                run()

        return unit

    parts = {
        "image_encoder": inference(lambda: model.encode_image(pixels)),
        "bart_encoder": inference(encode),
        f"decoder_{steps}_passes": inference(decode),
    }
    sides = [Side(name, run) for name, run in parts.items()]
    interleave(sides, list(range(args.repeats + 1)), device, warmup=1)
    return {side.name: side.median for side in sides}


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    env = environment(device, args.bf16)  # first: it sets the process up as our entry points do
    datamodule = synthetic_datamodule(args.image_size, args.batch_size)
    model = (
        build_ours(args.preset, args.image_size, datamodule.tokenizer, args.vocab_size)
        .model.to(device)
        .eval()
    )
    reference = reference_from(model, device).eval()
    if args.compile:
        model.compile_image_encoder()
    processor = datamodule.processor
    records = [record for file in datamodule.train_files for record in read_records(file)]
    result: dict[str, Any] = {
        "benchmark": "generation",
        "preset": args.preset,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "num_beams": args.num_beams,
        "max_new_tokens": args.max_new_tokens,
        "compile": args.compile,
        "questions_per_image": args.questions_per_image,
        "mix": args.mix,
        **env,
        "tasks": {},
    }
    tasks = args.tasks or (
        ["<OD>", "<DENSE_REGION_CAPTION>"] if args.mix == "coco" else ["<OD>", "<CAPTION>"]
    )
    for task in tasks:
        for beams in args.num_beams:
            # One beam setting keeps the JSON keyed by task alone, as before there were several.
            key = task if len(args.num_beams) == 1 else f"{task} beam-{beams}"
            if args.mix == "coco":
                result["tasks"][key] = bench_mix(task, beams, model, reference, processor, args, device)
                continue
            pairs = questions(task, records, args.batch_size, args.questions_per_image)
            result["tasks"][key] = bench_task(task, beams, model, reference, processor, pairs, args, device)
    print_json(result)
    return result


if __name__ == "__main__":
    run(parse_args())
