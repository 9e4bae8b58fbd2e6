#!/usr/bin/env bash
# Install mmcv (with compiled ops) + the OpenMMLab downstream stack into an existing Python environment.
#
#   bash scripts/install_mmcv.sh [PYTHON]        # PYTHON defaults to $F2L_PYTHON, then `python`
#
# Why a script: MMDetection 3.3 / MMSegmentation 1.2 need mmcv<2.2 with compiled ops, and no prebuilt
# wheel exists for current torch. We build mmcv 2.1.0 from its sdist once (~9 min on 2 CPU cores), patching
# its C++14/17 flags to C++20 (required by current torch headers), and cache the wheel keyed by
# torch version + CUDA/CPU so later runs (and other environments with the same torch) reuse it.
#
# Environment knobs:
#   F2L_PYTHON        python to install into (if no positional argument)
#   F2L_WHEEL_CACHE   wheel cache dir (default ${XDG_CACHE_HOME:-~/.cache}/f2lightning/wheels)
#   FORCE_CUDA=1      build the CUDA ops even if no GPU is visible (needs nvcc + a CUDA torch)
#   MAX_JOBS          parallel compile jobs (default: number of CPUs)
set -euo pipefail

PYTHON="${1:-${F2L_PYTHON:-python}}"
MMCV_VERSION="2.1.0"

# pyproject's `downstream` extra. ftfy/regex (mmseg) and six (mmdet) are imported by those packages but not
# declared by their wheels. mmengine 0.10 resolves `mmdet::` / `mmseg::` base configs with pkg_resources,
# which setuptools removed in 82; torch itself needs setuptools>=77.0.3.
DOWNSTREAM_PKGS=("mmengine>=0.10.4,<0.11" "mmdet>=3.3,<3.4" "mmsegmentation>=1.2.2,<1.3" ftfy regex six shapely
                 "setuptools>=77.0.3,<82")

mmcv_ops_ok() {
    "$PYTHON" - <<'EOF' 2>/dev/null
import mmcv
from mmcv.ops import nms, roi_align, MultiScaleDeformableAttention  # compiled ops
assert mmcv.__version__ < "2.2.0"
EOF
}

downstream_ok() {
    "$PYTHON" -c "import pkg_resources, mmengine, mmdet, mmseg, ftfy, regex, six, shapely" 2>/dev/null
}

if mmcv_ops_ok && downstream_ok; then
    echo "[install_mmcv] mmcv with ops, mmengine, mmdet and mmseg already import in $PYTHON: nothing to do."
    exit 0
fi

# Cache key: torch version (ABI of the compiled ops) + whether the CUDA ops are built.
read -r TORCH_VERSION TORCH_CUDA PY_TAG < <("$PYTHON" - <<'EOF'
import sys, torch
print(torch.__version__.split('+')[0], torch.version.cuda or 'none', f'cp{sys.version_info[0]}{sys.version_info[1]}')
EOF
)
if [[ "${FORCE_CUDA:-0}" == "1" ]] || "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    VARIANT="cu${TORCH_CUDA//./}"
    export FORCE_CUDA=1
else
    VARIANT="cpu"
fi
CACHE_ROOT="${F2L_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/f2lightning/wheels}"
CACHE_DIR="$CACHE_ROOT/mmcv-${MMCV_VERSION}-torch${TORCH_VERSION}-${VARIANT}-${PY_TAG}"
mkdir -p "$CACHE_DIR"

WHEEL="$(ls "$CACHE_DIR"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n1 || true)"
if [[ -z "$WHEEL" ]]; then
    echo "[install_mmcv] building mmcv $MMCV_VERSION ($VARIANT ops) for torch $TORCH_VERSION; this takes a while..."
    BUILD_DIR="$(mktemp -d)"
    trap 'rm -rf "$BUILD_DIR"' EXIT
    # mmcv's setup.py imports pkg_resources (removed in setuptools>=70). Put old setuptools + wheel + ninja in
    # a private directory that shadows the environment's copies only for this build, so the venv is untouched.
    TOOLS="$BUILD_DIR/buildtools"
    "$PYTHON" -m pip install --quiet --no-warn-conflicts --target "$TOOLS" "setuptools<70" wheel ninja
    BUILD_ENV=(env "PYTHONPATH=$TOOLS${PYTHONPATH:+:$PYTHONPATH}" "PATH=$TOOLS/bin:$PATH"
               MMCV_WITH_OPS=1 "MAX_JOBS=${MAX_JOBS:-$(nproc)}")

    # `pip download` of an sdist runs its setup.py for metadata, hence after the build tools are in place.
    "${BUILD_ENV[@]}" "$PYTHON" -m pip download --no-binary :all: --no-deps --no-build-isolation -d "$BUILD_DIR" "mmcv==$MMCV_VERSION"
    tar -xzf "$BUILD_DIR"/mmcv-"$MMCV_VERSION".tar.gz -C "$BUILD_DIR"
    SRC="$BUILD_DIR/mmcv-$MMCV_VERSION"
    # Current torch headers need C++20; mmcv pins -std=c++14/17 for both the host compiler and nvcc.
    sed -i -E 's/-std=c\+\+1[47]/-std=c++20/g' "$SRC/setup.py"

    START=$(date +%s)
    "${BUILD_ENV[@]}" "$PYTHON" -m pip wheel --no-build-isolation --no-deps -w "$BUILD_DIR/dist" "$SRC"
    echo "[install_mmcv] mmcv build took $(( $(date +%s) - START )) s"
    cp "$BUILD_DIR"/dist/mmcv-"$MMCV_VERSION"-*.whl "$CACHE_DIR/"
    WHEEL="$(ls "$CACHE_DIR"/mmcv-"$MMCV_VERSION"-*.whl | head -n1)"
else
    echo "[install_mmcv] reusing cached wheel $WHEEL"
fi

"$PYTHON" -m pip install "$WHEEL" "${DOWNSTREAM_PKGS[@]}"

if ! mmcv_ops_ok; then
    echo "[install_mmcv] ERROR: mmcv installed but its compiled ops do not import" >&2
    exit 1
fi
echo "[install_mmcv] done: $("$PYTHON" -c 'import mmcv, mmdet, mmseg, mmengine; print("mmcv", mmcv.__version__, "mmengine", mmengine.__version__, "mmdet", mmdet.__version__, "mmseg", mmseg.__version__)')"
