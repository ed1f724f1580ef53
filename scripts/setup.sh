#!/usr/bin/env bash
# Create the virtual environment .venv once and install aigi into it (editable, with test extras).
# Re-running is cheap: torch and the package are installed only when missing or when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! python -c "import torch" 2>/dev/null; then
  echo "setup: installing PyTorch (once)" >&2
  pip install -q "torch==2.13.0" || pip install -q "torch>=2.2"
fi
stamp=.venv/.aigi-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing aigi and its dependencies" >&2
  pip install -q -e ".[dev]"
  touch "$stamp"
fi
# invisible-watermark only makes the watermark test fixtures. Its metadata asks for opencv-python (GUI build) and torch,
# so it is installed without dependencies: the dev extra brings opencv-python-headless and PyWavelets instead.
if ! pip show -q invisible-watermark >/dev/null 2>&1; then
  echo "setup: installing invisible-watermark (test fixtures, --no-deps)" >&2
  pip install -q --no-deps "invisible-watermark==0.2.0"
fi
