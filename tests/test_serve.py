"""`f2lightning serve` over real HTTP: answers equal `f2lightning predict`'s lines, concurrent requests are answered
in batches, bad inputs get 4xx (also inside a batch of good ones) and the server goes on serving, the drawn answer
is `draw_prediction`'s picture, the task list is the registry."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from f2lightning.data.skips import SkipReport
from f2lightning.images import load_image
from f2lightning.inference.generation import GenerationSettings
from f2lightning.inference.loading import load_model
from f2lightning.inference.predict import build_requests, collect_images, predict
from f2lightning.tasks import TASKS
from f2lightning.visualize import draw_prediction
from tests.helpers.weights import tiny_checkpoint

MAX_IMAGE_BYTES = 20_000
# Small generations, and batches of up to 4 that wait long enough to fill on a busy 2-core machine.
SERVE_OPTIONS = ("--num-beams", "2", "--max-new-tokens", "24", "--device", "cpu",
                 "--max-batch-size", "4", "--batch-timeout", "0.3", "--max-image-bytes", str(MAX_IMAGE_BYTES))  # fmt: skip
SETTINGS = GenerationSettings(batch_size=4, num_beams=2, max_new_tokens=24, num_workers=0, progress=False)
COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(checkpoint: Path, folder: Path, *options: str) -> Iterator[str]:
    """`f2lightning serve checkpoint` in a process group of its own, logging to `folder/server.log`; yields its
    URL once `/health` answers 200, and stops the whole group (LitServe's worker processes too) afterwards."""
    port, log = _free_port(), folder / "server.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny model, 2 shared cores: a second thread only spins
    command = [
        sys.executable,
        "-m",
        "f2lightning.cli",
        "serve",
        str(checkpoint),
        "--port",
        str(port),
        *options,
    ]
    with open(log, "w") as out:
        server = subprocess.Popen(command, cwd=folder, stdout=out, stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while not _healthy(url):
            assert server.poll() is None, f"server exited ({server.returncode}):\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"server not healthy after 180 s:\n{log.read_text()[-4000:]}"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def _healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=5).status_code == 200
    except requests.ConnectionError:
        return False


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("checkpoint"))


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory) -> Iterator[str]:
    with running_server(checkpoint, tmp_path_factory.mktemp("server"), *SERVE_OPTIONS) as url:
        yield url


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    for i, color in enumerate(COLORS):
        image = Image.new("RGB", (64, 48), color)
        image.paste((255, 255, 255), (8 * i, 4, 8 * i + 20, 30))
        image.save(folder / f"{i:02d}.png")
    return folder


@pytest.fixture(scope="module")
def expected(checkpoint, images, tmp_path_factory) -> list[dict[str, Any]]:
    """`f2lightning predict`'s lines for every image with a task of each kind: plain, text input, region."""
    found = collect_images([images], SkipReport())
    todo = (
        build_requests(found, ["<OD>", "caption"])
        + build_requests(found, ["<CAPTION_TO_PHRASE_GROUNDING>"], text_input="a white square")
        + build_requests(found, ["<REGION_TO_CATEGORY>"], region=[4, 4, 40, 30])
    )
    model, processor = load_model(checkpoint)
    output = tmp_path_factory.mktemp("predict") / "lines.jsonl"
    predict(model, processor, todo, output, SETTINGS, source=checkpoint.name)
    return [json.loads(line) for line in output.read_text().splitlines()]


def _body(line: dict[str, Any], **extra: Any) -> dict[str, Any]:
    body = {"image": b64(Path(line["image"]).read_bytes()), "task": line["task"], **extra}
    if line["text_input"] is not None:
        body["text"] = line["text_input"]
    if line["region"] is not None:
        body["region"] = line["region"]
    return body


def _assert_close(actual: Any, expected: Any, where: str = "") -> None:
    """Equal, floats to float32 rounding (batched generation reorders the sums of the log-probabilities)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), where
        for key in expected:
            _assert_close(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected)):
            _assert_close(a, e, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=1e-4, abs=1e-6), where
    else:
        assert actual == expected, where


def _without_image_names(line: dict[str, Any]) -> dict[str, Any]:
    # The server names an upload by its digest, predict by its path; the answers must agree on everything else.
    return {**line, "key": None, "image": None, "record": {**line["record"], "image": None}}


def test_concurrent_requests_are_batched_and_answered_as_predict_answers(server, expected) -> None:
    before = requests.get(f"{server}/metrics", timeout=10).json()
    bodies = [_body(line) for line in expected] + [{"image": "not base64!", "task": "<OD>"}]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda b: requests.post(f"{server}/predict", json=b, timeout=120), bodies))
    after = requests.get(f"{server}/metrics", timeout=10).json()

    *good, bad = answers
    assert bad.status_code == 400 and "not base64" in bad.json()["detail"]  # alone: its batch-mates succeed
    for line, answer in zip(expected, good, strict=True):
        assert answer.status_code == 200, answer.text
        got = answer.json()
        assert got["text"] == line["text"], (line["image"], line["task"])
        _assert_close(
            _without_image_names(got), _without_image_names(line), f"{line['image']} {line['task']}"
        )

    count = len(bodies)
    assert after["requests"] - before["requests"] == count
    assert after["errors"]["4xx"] - before["errors"]["4xx"] == 1
    batches = after["batches"] - before["batches"]
    generate_calls = after["generate_calls"] - before["generate_calls"]
    # Fewer batches than requests means some batch held several; each batch generates once per task it holds.
    assert 0 < batches < count and generate_calls < count - 1, (batches, generate_calls)
    assert after["largest_batch"] > 1


def _bomb() -> bytes:
    # More pixels than Pillow's decompression-bomb limit, in a file of a few kB.
    out = io.BytesIO()
    Image.new("1", (9500, 9500)).save(out, format="PNG")
    assert len(out.getvalue()) < MAX_IMAGE_BYTES
    return out.getvalue()


def test_bad_inputs_get_4xx_and_the_server_goes_on_serving(server, images) -> None:
    png = b64((images / "00.png").read_bytes())
    cases = [
        ({"image": "not base64!", "task": "<OD>"}, 400, "not base64"),
        ({"image": b64(b"not an image"), "task": "<OD>"}, 400, "cannot decode image"),
        ({"image": png, "task": "<NO_SUCH_TASK>"}, 422, "unknown task"),
        ({"image": png, "task": "caption_to_phrase_grounding"}, 422, "needs an input"),
        ({"image": png, "task": "<OD>", "text": "a car"}, 422, "takes no input"),
        ({"image": b64(os.urandom(MAX_IMAGE_BYTES + 1)), "task": "<OD>"}, 413, "more than the 20000"),
        ({"image": "A" * 100_000, "task": "<OD>"}, 413, "too large"),  # the body itself, refused unread
        ({"image": b64(_bomb()), "task": "<OD>"}, 413, "decompression-bomb"),
        ({"task": "<OD>"}, 422, "missing"),
        ({"image": png, "task": "<REGION_TO_CATEGORY>", "region": [1, 2, 3]}, 422, "at least 4"),
        ({"image": png, "task": "<OD>", "txt": "misspelt"}, 422, "extra"),
        # a caption the processor would cut to 256 tokens: refused, not answered as another question
        (
            {"image": png, "task": "<CAPTION_TO_PHRASE_GROUNDING>", "text": "a dog and a man " * 150},
            413,
            "kept",
        ),
    ]
    before = requests.get(f"{server}/metrics", timeout=10).json()
    for body, status, detail in cases:
        answer = requests.post(f"{server}/predict", json=body, timeout=60)
        assert answer.status_code == status, (body.get("task"), answer.text[:300])
        assert detail.lower() in json.dumps(answer.json()["detail"]).lower(), answer.text[:300]
    after = requests.get(f"{server}/metrics", timeout=10).json()
    assert after["errors"]["4xx"] - before["errors"]["4xx"] == len(cases)
    assert after["errors"]["5xx"] == before["errors"]["5xx"]
    assert requests.get(f"{server}/health", timeout=10).status_code == 200
    answer = requests.post(f"{server}/predict", json={"image": png, "task": "<OD>"}, timeout=60)
    assert answer.status_code == 200 and "<OD>" in answer.json()["result"]


def test_draw_returns_the_picture_draw_prediction_makes(server, images) -> None:
    path = images / "01.png"
    data_url = "data:image/png;base64," + b64(path.read_bytes())  # what the playground sends
    answer = requests.post(
        f"{server}/predict", json={"image": data_url, "task": "<OD>", "draw": True}, timeout=60
    )
    assert answer.status_code == 200, answer.text
    got = answer.json()
    picture = Image.open(io.BytesIO(base64.b64decode(got["picture"])))
    drawn = draw_prediction(load_image(path), "<OD>", got["result"]["<OD>"])
    assert picture.size == drawn.size and picture.height > 48  # the image and its caption band
    assert np.array_equal(np.asarray(picture.convert("RGB")), np.asarray(drawn))


def test_tasks_are_the_registry(server) -> None:
    listed = requests.get(f"{server}/tasks", timeout=10).json()
    assert [(t["token"], t["name"], t["takes_input"]) for t in listed] == [
        (t.token, t.name, t.takes_input) for t in TASKS.values()
    ]


def test_the_command_refuses_clearly_without_litserve_or_with_an_unknown_device(monkeypatch, capsys) -> None:
    from f2lightning.cli import main
    from f2lightning.inference.serve import litserve_devices

    assert litserve_devices("cpu") == ("cpu", 1)
    assert litserve_devices("cuda") == ("cuda", [0]) and litserve_devices("cuda:1") == ("cuda", [1])
    assert main(["serve", "some/checkpoint", "--device", "mps"]) == 2
    assert "device must be cpu, cuda or cuda:N, got 'mps'" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "litserve", None)  # an import of it now fails, as without the extra
    monkeypatch.delitem(sys.modules, "f2lightning.inference.serve")
    assert main(["serve", "some/checkpoint"]) == 2
    assert "pip install 'f2lightning[serve]'" in capsys.readouterr().err
