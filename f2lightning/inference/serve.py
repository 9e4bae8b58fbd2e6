"""`f2lightning serve`: a checkpoint behind an HTTP API (LitServe), with a web playground on the same server.

`POST /predict` answers one image put to one task with the object `f2lightning predict` writes as a line
(`prediction_line`: parsed result with per-box scores, sequence score, raw text, record); `"draw": true` adds the
result drawn by `f2lightning.visualize.draw_prediction` as a base64 PNG (`picture`). LitServe collects concurrent
requests into batches (`max_batch_size`, `batch_timeout`); a batch runs one generation per task it holds, since
generation settings are per task. `GET /tasks` lists the task registry, `GET /playground` is a page that uploads an
image and shows the drawn answer, `GET /metrics` counts requests, errors, latency and batches; `/health` and `/info`
are LitServe's own. docs/serving.md has the API and its errors.
"""

# No `from __future__ import annotations` here: LitServe hands `decode_request`'s annotation to FastAPI as the
# request body type, and FastAPI cannot resolve it from a string in LitServe's module.

import base64
import binascii
import contextlib
import hashlib
import io
import multiprocessing
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import litserve as ls
import torch
from fastapi import HTTPException
from litserve.loops import BatchedLoop
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, FiniteFloat
from starlette.responses import HTMLResponse, JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from f2lightning.allocator import keep_freed_cpu_memory
from f2lightning.images import BadImageError, load_image_bytes
from f2lightning.inference.generation import Generation, generate_batch, generation_kwargs
from f2lightning.inference.loading import load_model, use_bf16
from f2lightning.inference.predict import Request, prediction_line
from f2lightning.inference.results import scored_result
from f2lightning.processor import share_images
from f2lightning.tasks import TASKS, UnknownTaskError, get_task
from f2lightning.visualize import draw_prediction

DEFAULT_MAX_IMAGE_BYTES = 20_000_000
# Room in a request body for everything beside the image: task, text input, region.
_BODY_OVERHEAD_BYTES = 64 * 1024


class PredictRequest(BaseModel):
    """The JSON body of `POST /predict`; FastAPI checks its shape (422) before the request is queued."""

    model_config = ConfigDict(extra="forbid")  # a misspelt field ("txt") is an error, not silently ignored

    image: str  # base64 of an encoded image file; a data: URL (what a browser's FileReader gives) also works
    task: str  # token or name of the task registry
    text: str | None = None
    # The region input, x0 y0 x1 y1 in pixels of the image.
    region: Annotated[list[FiniteFloat], Field(min_length=4, max_length=4)] | None = None
    draw: bool = False


@dataclass
class Upload:
    """A request that passed every check: what generation needs, and the image itself when it is to be drawn."""

    request: Request
    prompt: str
    pixels: torch.Tensor
    image: Image.Image | None


# ------------------------------------------------------------------------------------------------ metrics
class ServingStats:
    """Counters in shared memory: the HTTP process adds requests, errors and latency, the inference worker
    (a spawned process) adds batches; both hold this object (inherited by fork, pickled at spawn)."""

    FIELDS = ("requests", "client_errors", "server_errors", "latency_s", "batches", "batched_requests",
              "largest_batch", "generate_calls")  # fmt: skip

    def __init__(self) -> None:
        # The spawn context's lock: Python refuses to hand a fork-context lock to a spawned process.
        self._values = multiprocessing.get_context("spawn").Array("d", len(self.FIELDS))

    def count_answer(self, status: int, seconds: float) -> None:
        with self._values.get_lock():
            self._add("requests", 1)
            self._add("latency_s", seconds)
            if 400 <= status < 500:
                self._add("client_errors", 1)
            elif status >= 500:
                self._add("server_errors", 1)

    def count_batch(self, size: int, generate_calls: int) -> None:
        with self._values.get_lock():
            self._add("batches", 1)
            self._add("batched_requests", size)
            self._add("generate_calls", generate_calls)
            index = self.FIELDS.index("largest_batch")
            self._values[index] = max(self._values[index], size)

    def snapshot(self) -> dict[str, Any]:
        """What `GET /metrics` answers."""
        with self._values.get_lock():
            v = dict(zip(self.FIELDS, self._values[:]))
        return {
            "requests": int(v["requests"]),
            "errors": {"4xx": int(v["client_errors"]), "5xx": int(v["server_errors"])},
            "mean_latency_s": v["latency_s"] / v["requests"] if v["requests"] else None,
            "batches": int(v["batches"]),
            "mean_batch_size": v["batched_requests"] / v["batches"] if v["batches"] else None,
            "largest_batch": int(v["largest_batch"]),
            "generate_calls": int(v["generate_calls"]),
        }

    def _add(self, field: str, amount: float) -> None:
        self._values[self.FIELDS.index(field)] += amount


class RequestMetrics:
    """ASGI middleware: every answer to `path` (a 413 of LitServe's size check and 422 of FastAPI's body check
    included) counted by status class, with the time from request to response headers."""

    def __init__(self, app: ASGIApp, stats: ServingStats, path: str = "/predict") -> None:
        self.app, self.stats, self.path = app, stats, path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        start, counted = time.perf_counter(), False

        async def send_and_count(message: Message) -> None:
            nonlocal counted
            if message["type"] == "http.response.start":  # counted before the client can read the answer
                self.stats.count_answer(message["status"], time.perf_counter() - start)
                counted = True
            await send(message)

        try:
            await self.app(scope, receive, send_and_count)
        finally:
            if not counted:  # an exception escaped: the server's outermost middleware answers 500
                self.stats.count_answer(500, time.perf_counter() - start)


# ------------------------------------------------------------------------------------------------ the API
class Florence2API(ls.LitAPI):
    """One checkpoint answering `PredictRequest`s in batches (LitServe calls `setup` in its inference worker)."""

    def __init__(
        self,
        checkpoint: str | Path,
        *,
        tokenizer: str | Path | None = None,
        image_size: int | None = None,
        num_beams: int = 3,
        max_new_tokens: int | None = None,
        precision: str = "auto",
        source: str | None = None,
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        max_batch_size: int = 8,
        batch_timeout: float = 0.05,
        stats: ServingStats | None = None,
    ) -> None:
        # The batched loop even for max_batch_size 1, so `predict` always gets a list.
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, loop=BatchedLoop())
        self.checkpoint, self.tokenizer, self.image_size = str(checkpoint), tokenizer, image_size
        self.num_beams, self.max_new_tokens, self.precision = num_beams, max_new_tokens, precision
        self.source = source or Path(checkpoint).name
        self.max_image_bytes, self.stats = max_image_bytes, stats

    def setup(self, device: str) -> None:
        keep_freed_cpu_memory()  # the worker is a fresh interpreter, an entry point of its own
        self.model, self.processor = load_model(self.checkpoint, self.tokenizer, device, self.image_size)
        self.torch_device = torch.device(device)
        self.bf16 = use_bf16(device, self.precision)

    def decode_request(self, request: PredictRequest) -> Upload | HTTPException:
        # A bad request is answered with its error as a value: LitServe's batched loop fails every request of
        # a batch with an exception raised for one of them.
        try:
            return self._upload(request)
        except HTTPException as error:
            return error

    def predict(self, uploads: list[Upload | HTTPException]) -> list[dict[str, Any] | HTTPException]:
        answers: list[dict[str, Any] | HTTPException] = list(uploads)  # errors stay in their places
        by_task: dict[str, list[int]] = {}
        for index, upload in enumerate(uploads):
            if isinstance(upload, Upload):
                by_task.setdefault(upload.request.task, []).append(index)
        for task, indices in by_task.items():
            group = [uploads[i] for i in indices]
            for index, upload, generation in zip(indices, group, self._generate(task, group), strict=True):
                answers[index] = self._answer(upload, generation)
        if self.stats is not None:
            self.stats.count_batch(len(uploads), len(by_task))
        return answers

    def encode_response(self, answer: dict[str, Any] | HTTPException) -> JSONResponse:
        if isinstance(answer, HTTPException):  # the body FastAPI gives a raised HTTPException
            return JSONResponse({"detail": answer.detail}, status_code=answer.status_code)
        return JSONResponse(answer)

    def _upload(self, request: PredictRequest) -> Upload:
        try:  # the cheap checks first: a typo in the task should not cost an image decode
            task = get_task(request.task)
        except UnknownTaskError as error:
            raise HTTPException(422, str(error)) from None
        data = _image_bytes(request.image)
        if len(data) > self.max_image_bytes:
            raise HTTPException(
                413, f"image: {len(data)} bytes, more than the {self.max_image_bytes} allowed"
            )
        try:
            image = load_image_bytes(data, "image")
        except BadImageError as error:
            raise HTTPException(413 if error.reason == "image_too_large" else 400, str(error)) from None
        region = tuple(request.region) if request.region is not None else None
        try:  # the registry's own check of the task's input: needs one, takes none
            prompt = task.build_prompt(request.text, region, image.size)
        except ValueError as error:
            raise HTTPException(422, str(error)) from None
        length = len(self.processor.tokenizer(prompt)["input_ids"])
        if length > self.processor.max_prompt_length:  # the processor would cut it: another question
            raise HTTPException(
                413,
                f"text: the prompt is {length} tokens, more than the {self.processor.max_prompt_length} kept",
            )
        # The image's digest is its name: equal uploads in a batch share one encoded row (`share_images`).
        name = hashlib.sha1(data).hexdigest()
        return Upload(
            Request(name, image.size, task.token, request.text, region),
            prompt,
            self.processor.preprocess_image(image),
            image if request.draw else None,
        )

    def _generate(self, task: str, uploads: list[Upload]) -> list[Generation]:
        # `PromptBatches` decodes images from files; these arrived decoded, so the batch is assembled here the
        # way it does: one pixel row per distinct image, right-padded prompts.
        firsts, image_index = share_images([u.request.image for u in uploads])
        batch = {
            "pixel_values": torch.stack([uploads[i].pixels for i in firsts]),
            "image_index": image_index,
            **self.processor.tokenize_prompts([u.prompt for u in uploads]),
        }
        batch = {key: value.to(self.torch_device) for key, value in batch.items()}
        kwargs = generation_kwargs(
            self.processor, task, self.num_beams, self.max_new_tokens, with_logprobs=True
        )
        autocast = (
            torch.autocast(self.torch_device.type, dtype=torch.bfloat16)
            if self.bf16
            else contextlib.nullcontext()
        )
        with autocast:
            return generate_batch(self.model, self.processor, batch, kwargs)

    def _answer(self, upload: Upload, generation: Generation) -> dict[str, Any]:
        request = upload.request
        scored = scored_result(request.task, generation, request.image_size, self.processor)
        line = prediction_line(request, generation.text, scored, self.source)
        if upload.image is not None:
            picture = io.BytesIO()
            draw_prediction(upload.image, request.task, scored.result).save(picture, format="PNG")
            line["picture"] = base64.b64encode(picture.getvalue()).decode("ascii")
        return line


def _image_bytes(encoded: str) -> bytes:
    if encoded.startswith("data:"):
        encoded = encoded.partition(",")[2]
    try:  # whitespace dropped first: `base64` wraps its output at 76 columns
        return base64.b64decode("".join(encoded.split()), validate=True)
    except (binascii.Error, ValueError):  # ValueError: characters outside ASCII
        raise HTTPException(400, "image: not base64 (send the image file's bytes, base64-encoded)") from None


# ------------------------------------------------------------------------------------------------ the server
def task_list() -> list[dict[str, Any]]:
    """The task registry as `GET /tasks` gives it, in registration order."""
    return [
        {"token": t.token, "name": t.name, "takes_input": t.takes_input, "output": t.output}
        for t in TASKS.values()
    ]


def litserve_devices(device: str) -> tuple[str, int | list[int]]:
    """LitServe's `(accelerator, devices)` for a torch device: `cpu`, `cuda` (GPU 0), `cuda:N`."""
    kind, _, index = device.partition(":")
    if kind == "cpu" and not index:
        return "cpu", 1
    if kind == "cuda" and (not index or index.isdigit()):
        return "cuda", [int(index or 0)]
    raise ValueError(f"device must be cpu, cuda or cuda:N, got {device!r}")


def build_server(api: Florence2API, device: str = "cpu", timeout: float = 30) -> ls.LitServer:
    """A LitServer for `api` on one `device`, with `/tasks`, `/playground` and `/metrics` beside `/predict`.

    `timeout`: seconds a request may wait in the queue before LitServe answers 504. Bodies larger than the
    base64 of `api.max_image_bytes` are refused (413) before they are read to the end.
    """
    if api.stats is None:
        api.stats = ServingStats()
    accelerator, devices = litserve_devices(device)
    server = ls.LitServer(
        api,
        accelerator=accelerator,
        devices=devices,
        timeout=timeout,
        max_payload_size=4 * -(-api.max_image_bytes // 3) + _BODY_OVERHEAD_BYTES,
        middlewares=[(RequestMetrics, {"stats": api.stats})],
        model_metadata={
            "checkpoint": api.checkpoint,
            "num_beams": api.num_beams,
            "max_new_tokens": api.max_new_tokens,
            "max_batch_size": api.max_batch_size,
            "batch_timeout": api.batch_timeout,
        },
    )
    page = resources.files("f2lightning.inference").joinpath("playground.html").read_text(encoding="utf-8")
    server.app.add_api_route("/tasks", task_list, methods=["GET"])
    server.app.add_api_route("/playground", lambda: page, methods=["GET"], response_class=HTMLResponse)
    server.app.add_api_route("/metrics", api.stats.snapshot, methods=["GET"])
    return server
