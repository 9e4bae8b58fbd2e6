# The two commands of the README. Both set up .venv first (idempotent, see scripts/setup.sh).
PY := .venv/bin/python

.PHONY: setup demo test test-all lint

setup:
	bash scripts/setup.sh

# The demo needs no MMDetection stack: skip its (first-time, ~10 min) mmcv build.
demo:
	F2L_DOWNSTREAM=0 bash scripts/setup.sh
	$(PY) -m f2lightning.demo

test: setup
	$(PY) -m pytest -q

# Also the slow tests: DDP, crash/resume, the learning run, MMDetection/MMSegmentation end-to-end runs.
test-all: setup
	$(PY) -m pytest -q -m "slow or not slow"

# Style rules and formatting, checked (CI runs this before the tests; `ruff format .` fixes the second).
lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
