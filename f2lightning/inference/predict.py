"""`f2lightning predict`: run a checkpoint over images and write one JSON line per image and task.

Each line holds the parsed result in transformers' `post_process_generation` structure (`{"<OD>": {"bboxes",
"labels", "scores"}}`, `{"<CAPTION>": "..."}`) with per-box scores from the generated tokens' log-probabilities,
the sequence's `score`, and the same result as a record of our schema (`record`, annotations carrying `source` and
`score`), so the output feeds the data engine and training directly.

Lines are appended batch by batch and flushed; re-running the same command reads the output first and skips every
(image, task, input) already answered, so an interrupted run loses at most the batch in flight and duplicates
nothing (a line cut off by the interruption is removed before appending).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from f2lightning.data.records import read_records
from f2lightning.data.skips import SkipReport
from f2lightning.images import BadImageError, load_image, upright_size
from f2lightning.inference.generation import GenerationSettings, generations
from f2lightning.inference.records import result_record
from f2lightning.inference.results import scored_result
from f2lightning.model import Florence2
from f2lightning.processor import Florence2Processor
from f2lightning.tasks import get_task

IMAGE_EXTENSIONS = frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


@dataclass  # not frozen: Lightning's batch transfer rebuilds the dataclasses a batch carries
class Request:
    """One image put to one task: the file, the size its locations refer to, the task's text input / region."""

    image: str
    image_size: tuple[int, int]
    task: str
    text_input: str | None = None
    region: tuple[float, ...] | None = None

    @property
    def key(self) -> str:
        """What identifies an answer in the output, so a re-run can tell it is done."""
        return json.dumps([self.image, self.task, self.text_input, self.region])


@dataclass
class PredictSummary:
    written: int = 0  # lines appended by this run
    already_done: int = 0  # requests answered by an earlier run of the same command
    skipped: SkipReport = field(default_factory=SkipReport)  # requests whose image could not be decoded
    dropped: SkipReport = field(default_factory=SkipReport)  # parts of results a record cannot hold

    def __str__(self) -> str:
        return (f"wrote {self.written} prediction(s), {self.already_done} already done; images: {self.skipped}; "
                f"record annotations: {self.dropped}")  # fmt: skip


# ------------------------------------------------------------------------------------------------ inputs
def collect_images(
    inputs: Iterable[str | os.PathLike], report: SkipReport
) -> list[tuple[str, tuple[int, int]]]:
    """(image file, upright size) for every input: image files, folders (searched recursively), glob patterns and
    record JSONL files (their images at their records' sizes). Unreadable files are counted in `report`; an input
    that names nothing at all is an error."""
    images: dict[str, tuple[int, int] | None] = {}
    for given in map(str, inputs):
        path = Path(given)
        if path.suffix == ".jsonl" and path.is_file():
            for record in read_records(path, "skip", report=report):
                images.setdefault(record.image, record.image_size)
            continue
        if path.is_dir():
            found = sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.is_file():
            found = [given]
        else:
            found = sorted(glob.glob(given, recursive=True)) if glob.has_magic(given) else []
        if not found:
            raise FileNotFoundError(f"{given}: no such image file, folder, glob match or record JSONL")
        for image in found:
            images.setdefault(image, None)
    out = []
    for image, size in images.items():
        if size is None:
            try:
                size = upright_size(image)
            except BadImageError as error:
                report.drop(error.reason, example=str(error))
                continue
        out.append((image, size))
    return out


def build_requests(
    images: Sequence[tuple[str, tuple[int, int]]],
    tasks: Sequence[str],
    text_input: str | None = None,
    region: Sequence[float] | None = None,
) -> list[Request]:
    """Every image put to every task; `text_input` / `region` go to the tasks that take an input, and a task that
    needs one without it is an error before any model runs."""
    requests = []
    for token in (get_task(t).token for t in tasks):
        spec = get_task(token)
        if spec.takes_input and text_input is None and region is None:
            raise ValueError(f"{token} needs a text input (--text) or a region (--region)")
        given = (
            (text_input, tuple(region) if region is not None else None) if spec.takes_input else (None, None)
        )
        requests += [Request(image, size, token, *given) for image, size in images]
    return requests


# ------------------------------------------------------------------------------------------------ output
def finished_keys(path: Path) -> set[str]:
    """Keys of the requests an earlier run wrote to `path`; a last line cut off mid-write is removed."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:  # the interrupted run's half-written line: cut back to the last newline
            f.truncate(data.rfind(b"\n") + 1)
        data = data[: data.rfind(b"\n") + 1]
    keys = set()
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            keys.add(json.loads(line)["key"])
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(
                f"{path}:{number}: not a prediction line of f2lightning predict ({error})"
            ) from None
    return keys


def prediction_line(
    request: Request, text: str, scored: Any, source: str, report: SkipReport | None = None
) -> dict[str, Any]:
    """The JSON object written for one answered request."""
    record = result_record(
        request.image, request.image_size, request.task, scored.result, scored.score, source=source,
        text_input=request.text_input, region=request.region, report=report,
    )  # fmt: skip
    return {
        "key": request.key,
        "image": request.image,
        "width": request.image_size[0],
        "height": request.image_size[1],
        "task": request.task,
        "text_input": request.text_input,
        "region": list(request.region) if request.region is not None else None,
        "text": text,
        "score": scored.score,
        "result": {request.task: scored.result},
        "record": record.to_json(),
    }


def _picture_path(pictures: Path, request: Request) -> Path:
    digest = hashlib.sha1(request.key.encode("utf-8")).hexdigest()[:8]
    return pictures / f"{Path(request.image).stem}_{get_task(request.task).name}_{digest}.png"


# ------------------------------------------------------------------------------------------------ running
def answer(
    model: Florence2,
    processor: Florence2Processor,
    requests: Sequence[Request],
    settings: GenerationSettings,
    report: SkipReport,
) -> Iterator[tuple[Request, str, Any]]:
    """(request, generated text, scored result) for every request whose image decodes, batch by batch as they
    finish (not in input order); one generation pass per task. Undecodable images are counted in `report`."""
    by_task: dict[str, list[Request]] = {}
    for request in requests:
        by_task.setdefault(request.task, []).append(request)
    for task, task_requests in by_task.items():
        for batch in generations(model, processor, task, task_requests, settings, True, report):
            for index, generation in batch:
                request = task_requests[index]
                yield request, generation.text, scored_result(task, generation, request.image_size, processor)


def predict(
    model: Florence2,
    processor: Florence2Processor,
    requests: Sequence[Request],
    output: str | os.PathLike,
    settings: GenerationSettings,
    *,
    source: str = "florence2",
    pictures: str | os.PathLike | None = None,
    skipped: SkipReport | None = None,
) -> PredictSummary:
    """Answer `requests` into the JSONL file `output`, skipping those an earlier run answered; with `pictures`, also
    draw each result on its image there. Images that cannot be decoded are counted in `skipped` (which may
    already hold what `collect_images` skipped) and in the summary."""
    from f2lightning.visualize import draw_prediction

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    done = finished_keys(output)
    todo = [r for r in requests if r.key not in done]
    summary = PredictSummary(already_done=len(requests) - len(todo), skipped=skipped or SkipReport())
    already_skipped = summary.skipped.total
    if pictures is not None:
        Path(pictures).mkdir(parents=True, exist_ok=True)
    progress = tqdm(total=len(todo), desc="predict", unit="image", disable=not settings.progress)
    quiet = replace(settings, progress=False)  # the bar above counts images over all tasks
    with open(output, "a", encoding="utf-8") as f:
        for request, text, scored in answer(model, processor, todo, quiet, summary.skipped):
            line = prediction_line(request, text, scored, source, summary.dropped)
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
            f.flush()
            summary.written += 1
            progress.update()
            if pictures is not None:
                picture = draw_prediction(load_image(request.image), request.task, scored.result)
                picture.save(_picture_path(Path(pictures), request))
    progress.update(summary.skipped.total - already_skipped)
    progress.close()
    return summary
