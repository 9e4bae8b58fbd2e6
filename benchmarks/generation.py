"""Generation: images/s of beam-3 generation for <OD> and <CAPTION>, ours vs transformers' `generate`.

Three contestants on the same images, prompts, weights and generation settings (our processor's per-task
kwargs, with exactly `--max-new-tokens` new tokens, or the task's own budget where smaller: a fresh random model
would otherwise end a caption after one token, so the decoding work would depend on the init, not the task):

* ours, batched (`Florence2.generate`: the image + prompt are encoded once, beams reuse the encoder output);
* reference, batched (`Florence2ForConditionalGeneration.generate` on the same batch);
* reference one image at a time, as the public inference examples do.

The outputs are checked to be token-identical (`same_output` in the JSON). A fresh init's tokens hardly depend
on the input, so this is a sanity check; tests/test_model_equivalence.py proves the equivalence on weights
under which they do. With `--questions-per-image k` each image is asked k questions (for REC / VQA the synthetic
records' own expressions / questions), as RefCOCO and VQA evaluation do: ours encodes each image of the batch
once (`image_index`), the reference gets a copy per question. Rates then count questions (the JSON keeps the
`images_per_s` names).

    python -m benchmarks.generation --preset tiny
    python -m benchmarks.generation --preset base --batch-size 4 --max-new-tokens 16
    python -m benchmarks.generation --preset tiny --batch-size 16 --tasks "<REFERRING_EXPRESSION_COMPREHENSION>" \
        --questions-per-image 4 --max-new-tokens 8
    python -m benchmarks.generation --preset base --batch-size 4 --breakdown

`--breakdown` also times our parts alone: the image encoder, BART's encoder, and the decoder's forward passes
over batch x beams rows with a KV cache and no search around them. Their sum is a floor under any beam-search
loop that runs this model's computation, so `reference / floor` is the most such a loop could gain over the
reference's batched `generate` on this machine.
"""

from __future__ import annotations

import argparse
import inspect
from typing import Any

import torch
from transformers import BartForConditionalGeneration
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
from f2lightning.images import load_image
from f2lightning.processor import share_images
from f2lightning.tasks import get_task

# transformers 5.2x renamed the decoder cache argument and output field (`past_key_values` -> `cache`).
_CACHE = (
    "cache"
    if "cache" in inspect.signature(BartForConditionalGeneration.forward).parameters
    else "past_key_values"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="tiny", choices=["tiny", "base", "large"])
    parser.add_argument("--image-size", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions per task")
    parser.add_argument("--num-beams", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=24, help="tokens each answer decodes")
    parser.add_argument("--tasks", nargs="+", default=["<OD>", "<CAPTION>"])
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
    kwargs = processor.generation_kwargs(task, args.num_beams)
    kwargs["max_new_tokens"] = kwargs["min_new_tokens"] = min(kwargs["max_new_tokens"], args.max_new_tokens)
    ref_inputs = reference_inputs(input_ids, mask, config.num_image_tokens, config.image_token_id)
    outputs: dict[str, Any] = {}

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
        Side("ours, batched", ours),
        Side("reference, batched", reference_batched),
        Side("reference, one by one", reference_one_by_one),
    ]
    interleave(sides, list(range(args.repeats + 1)), device, warmup=1)
    same = torch.equal(outputs["ours"], outputs["reference"])
    rows = [[s.name, len(images) / s.median, s.median / sides[0].median] for s in sides]
    print_table(
        f"{task} beam-{args.num_beams} generation ({args.preset}, {args.image_size}px, batch {len(images)}, "
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
    return {
        **breakdown,
        "ours_images_per_s": len(images) / sides[0].median,
        "reference_batched_images_per_s": len(images) / sides[1].median,
        "reference_one_by_one_images_per_s": len(images) / sides[2].median,
        "speedup_vs_reference_batched": sides[1].median / sides[0].median,
        "speedup_vs_reference_one_by_one": sides[2].median / sides[0].median,
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
        **env,
        "tasks": {},
    }
    for task in args.tasks:
        pairs = questions(task, records, args.batch_size, args.questions_per_image)
        result["tasks"][task] = bench_task(task, model, reference, processor, pairs, args, device)
    print_json(result)
    return result


if __name__ == "__main__":
    run(parse_args())
