#!/usr/bin/env bash
# Set everything up, then run the test suite (offline; a few minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 AIGI_NO_PROGRESS=1
python -m pytest -q "$@"
