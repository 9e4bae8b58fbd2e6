"""`f2lightning annotate`: specialist models annotate images (paper §4.2.1), merged with what the images had.

A specialist is one of our Florence-2 checkpoints asked for some tasks, or an MMDetection detector (the paper's
region specialist, e.g. DINO) run through mmdet's own inference API. Specialists run in the order given, and a
checkpoint's tasks in the order given, each over the records as they stand: a caption written first is what a
later `<CAPTION_TO_PHRASE_GROUNDING>` grounds, and `<REGION_TO_SEGMENTATION>` segments every region without
polygons, human or generated.

Each (specialist, task) writes its answers to its own JSONL part (`<output>.parts/`), line by line, so an
interrupted run continues where it stopped; the merged records are written at the end.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from f2lightning.data.records import write_records
from f2lightning.data.schema import Record, Region
from f2lightning.data.skips import SkipReport
from f2lightning.engine.merge import REGION_TASKS, merge
from f2lightning.geometry import mask_to_polygons
from f2lightning.inference.generation import GenerationSettings
from f2lightning.inference.predict import Request, finished_keys
from f2lightning.tasks import get_task

# Image-level tasks ask nothing but the image; the others take their input from what the record holds.
IMAGE_TASKS = {
    "<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>", "<OD>", "<DENSE_REGION_CAPTION>",
    "<REGION_PROPOSAL>", "<OCR_WITH_REGION>",
}  # fmt: skip
CAPTION_GROUNDING = "<CAPTION_TO_PHRASE_GROUNDING>"
ANNOTATION_TASKS = IMAGE_TASKS | {CAPTION_GROUNDING} | REGION_TASKS


def input_records(inputs: Iterable[str | os.PathLike], report: SkipReport) -> list[Record]:
    """Records to annotate: record JSONL files as they are (their annotations are kept), and a bare record for
    every image file, folder image or glob match (`inference.predict.collect_images`). Bad lines and
    unreadable images are counted in `report`."""
    from f2lightning.data.records import read_records
    from f2lightning.inference.predict import collect_images

    records: list[Record] = []
    images = []
    for given in inputs:
        if str(given).endswith(".jsonl") and Path(given).is_file():
            records += read_records(given, "skip", report=report)
        else:
            images.append(given)
    records += [Record(image, *size) for image, size in (collect_images(images, report) if images else [])]
    return records


def requests_for(task: str, records: Iterable[Record]) -> list[Request]:
    """What `task` is asked of each record: the image alone, each brief caption to ground, or each region
    without polygons to segment."""
    task = get_task(task).token
    requests = []
    for record in records:
        if task in IMAGE_TASKS:
            requests.append(Request(record.image, record.image_size, task))
        elif task == CAPTION_GROUNDING:
            requests += [
                Request(record.image, record.image_size, task, str(t)) for t in record.texts.get("brief", [])
            ]
        elif task in REGION_TASKS:
            requests += [
                Request(record.image, record.image_size, task, region=tuple(r.box))
                for r in record.regions
                if not r.polygons
            ]
        else:
            raise ValueError(
                f"annotate cannot choose the input of {task}; it annotates {sorted(ANNOTATION_TASKS)}"
            )
    return requests


def read_part(path: Path) -> Iterator[dict[str, Any]]:
    """The answers an earlier (or this) run wrote to a part file (`finished_keys` cuts a half-written last line)."""
    finished_keys(path)
    if path.exists():
        yield from (
            json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
        )


@dataclass
class Florence2Specialist:
    """One of our checkpoints, asked for `tasks` (tokens or names), answering as `f2lightning predict` does.

    `backend="ray"` answers on a Ray Data actor pool of `workers` actors (one model each, one GPU each when
    CUDA is there) instead of in this process; the answers are the same."""

    checkpoint: str
    tasks: Sequence[str]
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    source: str | None = None
    tokenizer: str | None = None
    image_size: int | None = None
    backend: str = "local"
    workers: int = 2

    def __post_init__(self) -> None:
        self.tasks = [get_task(t).token for t in self.tasks]
        unknown = [t for t in self.tasks if t not in ANNOTATION_TASKS]
        if unknown:
            raise ValueError(
                f"annotate cannot choose the input of {unknown}; it annotates {sorted(ANNOTATION_TASKS)}"
            )
        if self.backend not in ("local", "ray"):
            raise ValueError(f"backend must be 'local' or 'ray', got {self.backend!r}")
        self.source = self.source or Path(self.checkpoint).name
        self._loaded: tuple | None = None

    @property
    def name(self) -> str:
        return self.source  # type: ignore[return-value]  # set in __post_init__

    def answer(
        self, requests: Sequence[Request], part: Path, skipped: SkipReport, dropped: SkipReport
    ) -> None:
        """Append the answers to `requests` that `part` does not hold yet."""
        if self.backend == "ray":
            from f2lightning.engine.distributed import answer_on_ray

            answer_on_ray(self, requests, part, skipped, dropped)
            return
        from f2lightning.inference.loading import load_model
        from f2lightning.inference.predict import predict

        if self._loaded is None:
            self._loaded = load_model(self.checkpoint, self.tokenizer, self.settings.device, self.image_size)
        summary = predict(*self._loaded, requests, part, self.settings, source=self.name, skipped=skipped)
        for reason, count in summary.dropped.dropped.items():
            dropped.drop(reason, count, example=(summary.dropped.examples.get(reason) or [None])[0])


@dataclass
class MMDetSpecialist:
    """An MMDetection detector (config + checkpoint) as a region specialist: every detection at or above
    `score_threshold` becomes a region with its class name, score and, from a mask head, polygons."""

    config: str
    checkpoint: str
    score_threshold: float = 0.3
    device: str = "cpu"
    source: str | None = None
    tasks: Sequence[str] = ("<OD>",)

    def __post_init__(self) -> None:
        self.source = self.source or Path(self.checkpoint).stem
        self._model = None

    @property
    def name(self) -> str:
        return self.source  # type: ignore[return-value]

    def answer(
        self, requests: Sequence[Request], part: Path, skipped: SkipReport, dropped: SkipReport
    ) -> None:
        try:
            from mmdet.apis import inference_detector, init_detector
        except ImportError as error:
            raise ImportError(
                f"an MMDetection specialist needs mmdet ({error}): bash scripts/setup.sh installs it"
            ) from error
        from f2lightning.images import BadImageError, load_image

        if self._model is None:
            self._model = init_detector(self.config, self.checkpoint, device=self.device)
        classes = self._model.dataset_meta.get("classes") or ()
        done = finished_keys(part)
        todo = [r for r in requests if r.key not in done]
        with open(part, "a", encoding="utf-8") as f:
            for request in tqdm(todo, desc=f"annotate {self.name}", unit="image"):
                try:
                    # mmdet's pipeline reads BGR arrays; decoding here keeps EXIF rotation and bad-file
                    # handling the same as for every other specialist.
                    image = load_image(request.image)
                except BadImageError as error:
                    skipped.drop(error.reason, example=str(error))
                    continue
                result = inference_detector(self._model, np.ascontiguousarray(np.asarray(image)[:, :, ::-1]))
                record = self._record(request, result.pred_instances, classes, dropped)
                f.write(json.dumps({"key": request.key, "image": request.image, "task": request.task,
                                    "region": None, "record": record.to_json()}) + "\n")  # fmt: skip
                f.flush()

    def _record(
        self, request: Request, instances: Any, classes: Sequence[str], dropped: SkipReport
    ) -> Record:
        width, height = request.image_size
        record = Record(request.image, width, height, exhaustive=True)
        masks = instances.masks.cpu().numpy() if "masks" in instances else None
        for i, (box, score, label) in enumerate(
            zip(instances.bboxes.tolist(), instances.scores.tolist(), instances.labels.tolist(), strict=True)
        ):
            if score < self.score_threshold:
                dropped.drop("detection_below_threshold")
                continue
            box = [min(max(v, 0.0), float(width if k % 2 == 0 else height)) for k, v in enumerate(box)]
            if not (box[2] > box[0] and box[3] > box[1]):
                dropped.drop("generated_box_without_area", example=f"{request.image}: {box}")
                continue
            category = classes[label] if label < len(classes) else str(label)
            polygons = mask_to_polygons(masks[i]) if masks is not None else []
            record.regions.append(Region(box=box, category=category, polygons=polygons, source=self.name,
                                         score=float(score)))  # fmt: skip
        return record


def annotate(
    records: list[Record],
    specialists: Sequence[Florence2Specialist | MMDetSpecialist],
    output: str | os.PathLike,
) -> tuple[list[Record], SkipReport, SkipReport]:
    """Run every specialist's tasks over `records` (merged in place, in order) and write them to `output`.

    Returns the records, the images that could not be decoded and what the records could not hold (both by
    reason). Parts already answered by an interrupted run are read back, not asked again.
    """
    output = Path(output)
    parts = output.with_name(output.name + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    by_image = {record.image: record for record in records}
    skipped, dropped = SkipReport(), SkipReport()
    for specialist in specialists:
        for task in specialist.tasks:
            task = get_task(task).token
            part = parts / f"{specialist.name}_{get_task(task).name}.jsonl"
            specialist.answer(requests_for(task, records), part, skipped, dropped)
            for line in read_part(part):
                record = by_image.get(line["image"])
                if record is not None:
                    merge(
                        record, Record.from_json(line["record"], f"{part}"), task, line.get("region"), dropped
                    )
    output.parent.mkdir(parents=True, exist_ok=True)
    write_records(_relative(records, output.parent), output)
    return records, skipped, dropped


def _relative(records: Sequence[Record], folder: Path) -> list[Record]:
    """Copies whose image paths are relative to `folder`, so the record file and its images can move together."""
    from dataclasses import replace

    return [replace(r, image=os.path.relpath(os.path.abspath(r.image), folder.resolve())) for r in records]
