"""The playground page of `f2lightning serve` in a real browser (the system Chromium, headless): the task list is the
registry's, the text input follows the chosen task, an uploaded image put to `<OD>` comes back drawn by
`draw_prediction` beside its JSON, an error shows the server's message. The screenshot goes to `$F2L_ARTIFACTS`
(else the test's tmp folder)."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect, sync_playwright

from f2lightning.images import load_image
from f2lightning.tasks import TASKS
from f2lightning.visualize import draw_prediction
from tests.helpers.weights import tiny_checkpoint
from tests.test_serve import SERVE_OPTIONS, running_server

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on PATH (scripts/setup.sh installs it with apt-get as root)"
)


def test_the_playground_draws_an_uploaded_image_answer(tmp_path) -> None:
    image_path = tmp_path / "upload.png"
    image = Image.new("RGB", (128, 96), (40, 90, 160))
    image.paste((250, 250, 250), (20, 16, 70, 60))
    image.save(image_path)
    artifacts = Path(os.environ.get("F2L_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    checkpoint = tiny_checkpoint(tmp_path / "checkpoint")

    with running_server(checkpoint, tmp_path, *SERVE_OPTIONS) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page()
        expect.set_options(timeout=60_000)  # a busy 2-core machine
        page.goto(f"{url}/playground")

        options = page.locator("#task option")
        expect(options).to_have_count(len(TASKS))
        assert [options.nth(i).get_attribute("value") for i in range(len(TASKS))] == list(TASKS)
        page.select_option("#task", "<CAPTION_TO_PHRASE_GROUNDING>")
        expect(page.locator("#text")).to_be_visible()

        page.set_input_files("#image", str(image_path))
        page.click("#submit")  # without the text that task needs: the server's 422, shown on the page
        expect(page.locator("#status")).to_contain_text("422: <CAPTION_TO_PHRASE_GROUNDING> needs an input")

        page.select_option("#task", "<OD>")
        expect(page.locator("#text")).to_be_hidden()
        page.click("#submit")
        expect(page.locator("#picture")).to_have_attribute("src", re.compile(r"^data:image/png;base64,"))
        page.wait_for_function("document.getElementById('picture').naturalWidth > 0")
        line = json.loads(page.locator("#result").text_content())
        shown = page.locator("#picture").get_attribute("src").partition(",")[2]
        page.screenshot(path=artifacts / "playground.png", full_page=True)
        browser.close()

    assert line["task"] == "<OD>" and "bboxes" in line["result"]["<OD>"]
    picture = Image.open(io.BytesIO(base64.b64decode(shown))).convert("RGB")
    drawn = draw_prediction(load_image(image_path), "<OD>", line["result"]["<OD>"])
    assert np.array_equal(np.asarray(picture), np.asarray(drawn))  # the page shows the server's drawing
    assert (artifacts / "playground.png").stat().st_size > 0
