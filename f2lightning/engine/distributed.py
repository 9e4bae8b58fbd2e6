"""Annotation beyond one machine: a Florence-2 specialist's requests answered on a Ray Data actor pool.

Each actor loads the checkpoint once and answers batches of requests with the same code as the local backend
(`inference.predict.answer`); the driver turns the answers into prediction lines and appends them to the part file,
so results, resume and counting are the local backend's. Without a running cluster (`ray.init()` not called, no
`RAY_ADDRESS`), a local one is started with the machine's CPUs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from f2lightning.data.skips import SkipReport
from f2lightning.inference.predict import Request, finished_keys, prediction_line
from f2lightning.inference.results import ScoredResult


class _Answerer:
    """A Ray actor holding one model: a batch of JSON requests in, one JSON answer (or skip) per request out."""

    def __init__(
        self, checkpoint: str, tokenizer: str | None, image_size: int | None, settings: dict
    ) -> None:
        import torch

        from f2lightning.inference.generation import GenerationSettings
        from f2lightning.inference.loading import load_model

        torch.set_num_threads(1)  # one actor per CPU: a second thread per actor only contends
        self.settings = GenerationSettings(**settings)
        self.model, self.processor = load_model(checkpoint, tokenizer, self.settings.device, image_size)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from f2lightning.inference.predict import answer

        requests = [_request(json.loads(item)) for item in batch["request"]]
        skipped = SkipReport(max_examples=len(requests))  # every skipped image named: its reason goes back
        answers = {
            request.key: {"text": text, "result": scored.result, "score": scored.score}
            for request, text, scored in answer(self.model, self.processor, requests, self.settings, skipped)
        }
        # Columns of equal length: a request whose image could not be decoded answers with the reason instead.
        reasons = {
            example.partition(": ")[0]: reason
            for reason, examples in skipped.examples.items()
            for example in examples
        }
        out = [
            json.dumps(
                answers[r.key] if r.key in answers else {"skipped": reasons.get(r.image, "undecodable_image")}
            )
            for r in requests
        ]
        return {"request": batch["request"], "answer": np.array(out, dtype=object)}


def _request(fields: dict[str, Any]) -> Request:
    region = fields.get("region")
    return Request(fields["image"], tuple(fields["image_size"]), fields["task"], fields.get("text_input"),
                   tuple(region) if region is not None else None)  # fmt: skip


def answer_on_ray(
    specialist: Any,
    requests: Sequence[Request],
    part: Path,
    skipped: SkipReport,
    dropped: SkipReport,
) -> None:
    """Append to `part` the answers to the `requests` it does not hold yet, computed on `specialist.workers`
    Ray actors (one GPU each when the specialist's device is CUDA). `specialist` is an
    `annotate.Florence2Specialist` (not imported here: annotate imports this module)."""
    try:
        import ray
    except ImportError as error:
        raise ImportError(
            f"the Ray backend needs ray ({error}): pip install 'f2lightning[engine]'"
        ) from error
    done = finished_keys(part)
    todo = [r for r in requests if r.key not in done]
    if not todo:
        return
    if not ray.is_initialized():
        # A local cluster (or the one RAY_ADDRESS names). Its logical CPUs leave one beyond the actors' for Ray
        # Data's own read tasks, which would otherwise wait for an actor to finish.
        cpus = None if os.environ.get("RAY_ADDRESS") else max(os.cpu_count() or 1, specialist.workers + 1)
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    settings = replace(
        specialist.settings, progress=False, num_workers=0
    )  # each actor decodes its own images
    gpu = settings.device.startswith("cuda")
    dataset = ray.data.from_items([{"request": json.dumps(asdict(r))} for r in todo])
    answered = dataset.map_batches(
        _Answerer,
        fn_constructor_kwargs={
            "checkpoint": specialist.checkpoint,
            "tokenizer": specialist.tokenizer,
            "image_size": specialist.image_size,
            "settings": asdict(settings),
        },
        batch_size=settings.batch_size * 4,
        concurrency=specialist.workers,
        num_gpus=1 if gpu else 0,
        num_cpus=1,
    )
    with open(part, "a", encoding="utf-8") as f:
        for row in answered.iter_rows():
            request, found = _request(json.loads(row["request"])), json.loads(row["answer"])
            if "skipped" in found:
                skipped.drop(found["skipped"], example=request.image)
                continue
            scored = ScoredResult(found["result"], found["score"])
            line = prediction_line(request, found["text"], scored, specialist.name, dropped)
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
            f.flush()
