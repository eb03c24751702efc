#!/usr/bin/env bash
# Create .venv and install the project into it. Idempotent: a second run only checks and returns.
#
# Where no NVIDIA GPU is visible, torch is pinned to the CPU build first (TORCH_SPEC, default torch==2.13.0) so that
# the project's normal torch range is already satisfied and pip does not pull several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
VENV=.venv
STAMP=$VENV/.installed

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
want=$(cat pyproject.toml | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi

pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found; torch comes from the project's range (CUDA build)"
  else
    echo "setup: no GPU found; installing the CPU build $TORCH_SPEC"
    pip install "$TORCH_SPEC"
  fi
fi
pip install -e ".[dev]"
echo "$want" > "$STAMP"
echo "setup: $VENV ready"
