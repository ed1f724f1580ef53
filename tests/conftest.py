"""Every test runs with its own feature cache and without progress bars, on a fixed number of CPU threads."""

# Thread count for the whole test run, chosen before torch is imported anywhere (this conftest is loaded before any
# test module). torch's default (one intra-op thread per core) is a bad choice for this suite on a shared 2-core machine:
# the tensors are tiny, so extra threads buy almost nothing, and when another process holds a core the OpenMP threads
# wait on each other. Measured with `python -m pytest -q -x -p no:cacheprovider` on the 10 slowest tests (2 cores):
#   idle machine:                 1 thread 27.7-33.5 s, 2 threads 27.3-33.1 s (2 threads ~2-7% faster, within noise);
#   one core busy (a spin loop):  1 thread 30.0-33.1 s, 2 threads 45.3-49.6 s (2 threads ~1.5x slower);
#   whole suite, reported under others' load: 58 s with 1 thread vs 242 s with the default;
#   whole suite here with this setting, load average ~2 from others: 83 s (378 tests).
# So the default is 1. Override with AIGI_TEST_THREADS=N; otherwise an OMP_NUM_THREADS the user set is respected.
# The OMP/MKL/OpenBLAS variables are exported too, so any subprocess a test starts (e.g. the CLI; none does today)
# and DataLoader worker processes get the same setting.
import os

_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _test_threads() -> int:
    name = "AIGI_TEST_THREADS" if os.environ.get("AIGI_TEST_THREADS") else "OMP_NUM_THREADS"
    raw = os.environ.get(name) or "1"
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{name}={raw!r}: expected a whole number of threads, 1 or more")
    return n


_THREADS = _test_threads()
for _var in _THREAD_VARS:
    if os.environ.get("AIGI_TEST_THREADS") or not os.environ.get(_var):  # an explicit AIGI_TEST_THREADS wins
        os.environ[_var] = str(_THREADS)

import torch  # noqa: E402  (after the environment above, so OpenMP/MKL start with it)

torch.set_num_threads(_THREADS)
try:
    # Only allowed before any inter-op parallel work has started; if a plugin already started it, keep its pool.
    torch.set_num_interop_threads(_THREADS)
except RuntimeError:
    pass

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def _shared_onnx_dir(tmp_path_factory):
    """One ONNX cache for the session: the shipped model's graph is exported once, not in every test."""
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch, _shared_onnx_dir):
    monkeypatch.setenv("AIGI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("AIGI_ONNX_DIR", str(_shared_onnx_dir))
    monkeypatch.setenv("AIGI_NO_PROGRESS", "1")


@pytest.fixture()
def labelled_images(tmp_path):
    """A small ``data/{0_real,1_fake}`` folder of random images (reals smoothed, so the two classes differ)."""
    return make_labelled_images(tmp_path / "data")


def make_labelled_images(root):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("0_real", "1_fake"):
        (root / label).mkdir(parents=True)
        for i in range(6):
            a = rng.integers(0, 256, (80, 90, 3), dtype=np.uint8)
            if label == "0_real":
                a = np.cumsum(a.astype(np.int64), axis=1).astype(np.uint8)
            Image.fromarray(a).save(root / label / f"{label}_{i}.jpg")
    return root


@pytest.fixture()
def probe_dir(labelled_images, tmp_path):
    """A univfd linear probe (a model with no per-patch map) trained on the tiny random backbone."""
    from tiny import EFFNET_SPEC, SMALL_PROTOCOL

    from aigi.engine.trainer import train

    out = tmp_path / "probe"
    tiny = {"spec": EFFNET_SPEC.model_dump(mode="json"), "eval_protocol": SMALL_PROTOCOL.model_dump(mode="json")}
    train("univfd", {"data": labelled_images, "out": out, **tiny}, progress=False)
    return out
