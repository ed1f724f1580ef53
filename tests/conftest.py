"""Every test runs with its own feature cache and without progress bars."""

import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AIGI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("AIGI_NO_PROGRESS", "1")
