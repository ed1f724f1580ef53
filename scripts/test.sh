#!/usr/bin/env bash
# Set everything up, then lint (ruff) and run the test suite (offline; about two minutes on 2 cores once installed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 AIGI_NO_PROGRESS=1
# One CPU thread per process unless the user chose otherwise (AIGI_TEST_THREADS, or their own OMP_NUM_THREADS etc.):
# on a shared 2-core machine torch's default of a thread per core made the suite 1.5-4x slower (see tests/conftest.py).
: "${OMP_NUM_THREADS:=${AIGI_TEST_THREADS:-1}}" "${MKL_NUM_THREADS:=$OMP_NUM_THREADS}" "${OPENBLAS_NUM_THREADS:=$OMP_NUM_THREADS}"
export OMP_NUM_THREADS MKL_NUM_THREADS OPENBLAS_NUM_THREADS
ruff check src tests benchmarks    # lint (pyproject.toml: line length 120, pyflakes, import order)
ruff format --check src tests benchmarks
python -m pytest -q "$@"
