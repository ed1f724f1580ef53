"""Every test runs with its own feature cache and without progress bars."""

import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AIGI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("AIGI_NO_PROGRESS", "1")


@pytest.fixture()
def labelled_images(tmp_path):
    """A small ``data/{0_real,1_fake}`` folder of random images (reals smoothed, so the two classes differ)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for label in ("0_real", "1_fake"):
        (root / label).mkdir(parents=True)
        for i in range(6):
            a = rng.integers(0, 256, (80, 90, 3), dtype=np.uint8)
            if label == "0_real":
                a = np.cumsum(a.astype(np.int64), axis=1).astype(np.uint8)
            Image.fromarray(a).save(root / label / f"{label}_{i}.jpg")
    return root
