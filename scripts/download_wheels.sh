#!/usr/bin/env bash
# Wheels for an offline machine that already has a CUDA PyTorch (a GPU image with torch, lightning, torchmetrics,
# tokenizers, numpy ...): the f2lightning requirements such images lack or hold at older versions, pinned to the
# versions in .venv, i.e. the ones CI tests. Binary wheels only, no dependencies, for the target Python.
#
#   bash scripts/download_wheels.sh DEST [PYTHON_VERSION] [PACKAGE ...]
#       PYTHON_VERSION  the offline machine's `python3 -V` (default 3.12)
#       PACKAGE         default: transformers timm pycocotools regex (pycocotools is rarely in GPU images;
#                       transformers needs a newer regex than some ship)
#
# Then, on the offline machine, from the repository root (nothing is installed into its Python):
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site DEST/*.whl &&
#       PYTHONPATH=/tmp/site bash benchmarks/gpu_check.sh python3
set -euo pipefail
cd "$(dirname "$0")/.."

dest=${1:?usage: bash scripts/download_wheels.sh DEST [PYTHON_VERSION] [PACKAGE ...]}
python_version=${2:-3.12}
shift $(( $# < 2 ? $# : 2 ))
packages=("$@")
[ ${#packages[@]} -gt 0 ] || packages=(transformers timm pycocotools regex)

[ -x .venv/bin/python ] || { echo "download_wheels: no .venv; run 'make setup' first" >&2; exit 1; }
# name==version as installed here; a package missing from .venv is an error, not a silently unpinned download.
pin_text=$(.venv/bin/python - "${packages[@]}" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version

for name in sys.argv[1:]:
    try:
        print(f"{name}=={version(name)}", end=" ")
    except PackageNotFoundError:
        sys.exit(f"download_wheels: {name} is not installed in .venv, so there is no tested version to pin")
EOF
)
read -r -a pins <<<"$pin_text"

platforms=()
for tag in manylinux_2_28 manylinux_2_17 manylinux2014; do platforms+=(--platform "${tag}_x86_64"); done
mkdir -p "$dest"
.venv/bin/python -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version "$python_version" --implementation cp "${platforms[@]}" -d "$dest" "${pins[@]}"
echo "download_wheels: ${pins[*]} (Python $python_version) in $dest"
