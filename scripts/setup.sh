#!/usr/bin/env bash
# Create .venv at the repository root with f2lightning, its test tools and the MMDetection/MMSegmentation
# stack (mmcv compiled with ops, cached), and Chromium for the browser test where apt-get can install it (as
# root). Safe to re-run: every step skips what is already in place.
#
#   F2L_TORCH       torch requirement(s) to install first (default: the CPU-capable pair that lies on this
#                   project's build machines; on a CUDA machine install your torch first and set F2L_TORCH="")
#   F2L_DOWNSTREAM  set to 0 to skip the mmcv / mmdet / mmseg stack
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)

torch_spec=${F2L_TORCH-"torch==2.14.1 torchvision==0.29.1"}
if [ -n "$torch_spec" ] && ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
    echo "setup: installing $torch_spec"
    # shellcheck disable=SC2086
    "${pip[@]}" install $torch_spec
fi

extras=dev,streaming,engine,lora,parquet,serve,onnx
[ "${F2L_DOWNSTREAM:-1}" = 1 ] && extras=$extras,downstream
stamp=.venv/.installed-${extras//,/-}
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing f2lightning[$extras]"
    "${pip[@]}" install -e ".[$extras]"
    touch "$stamp"
fi

if [ "${F2L_DOWNSTREAM:-1}" = 1 ]; then
    bash scripts/install_mmcv.sh .venv/bin/python
fi

# tests/test_playground.py drives the system Chromium (playwright's own browser download is not reachable from
# the build machines); without one the test skips, so a failed install does not stop the setup.
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing chromium (apt-get)"
    # A fresh image may have no package lists yet: fetch them once when the first try finds nothing.
    apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; } ||
        echo "setup: chromium not installed; tests/test_playground.py will skip"
fi
echo "setup: done (.venv/bin/python)"
