"""The feature cache is a trust boundary: each entry is sealed to its image and namespace, and a planted, copied,
old-format or damaged entry is recomputed; a cache that cannot be written warns once and the run carries on."""

import hashlib
import os

import numpy as np
import pytest
from faults import FullDisk, read_only
from test_features import Counter, _img

from aigi.backbones.base import Preprocess
from aigi.data.transforms import EvalProtocol
from aigi.engine.features import ENTRY_MAGIC, FeatureCache, extract

PRE, PROTO = Preprocess(size=32), EvalProtocol(crop=32)


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def two_images(tmp_path):
    return _img(tmp_path / "dark.png", 10), _img(tmp_path / "light.png", 240)


def _fill(paths, cache):
    fn = Counter()
    return extract(paths, fn, PRE, PROTO, cache=cache, progress=False), fn


def test_entry_copied_from_another_image_is_recomputed(two_images, tmp_path):
    dark, light = two_images
    cache = FeatureCache(tmp_path / "cache", {"backbone": "x"})
    truth, _ = _fill([dark, light], cache)
    # plant the light image's entry under the dark image's key: before entries were sealed, it was trusted
    cache._path(_sha(dark)).write_bytes(cache._path(_sha(light)).read_bytes())
    again, fn = _fill([dark], cache)
    assert fn.n == 1 and again.cache_hits == 0
    np.testing.assert_array_equal(again.features[0], truth.features[0])
    assert cache.get(_sha(dark)) is not None  # the recomputed entry replaced the planted one


def test_plain_npy_and_other_namespace_entries_are_not_trusted(two_images, tmp_path):
    dark, _ = two_images
    cache = FeatureCache(tmp_path / "cache", {"backbone": "x"})
    other = FeatureCache(tmp_path / "cache", {"backbone": "y"})
    truth, _ = _fill([dark], cache)
    entry = cache._path(_sha(dark))
    with open(entry, "wb") as fh:  # an old-format entry, or a forged one: a bare .npy of chosen numbers
        np.save(fh, np.full_like(truth.features[0], 0.9), allow_pickle=False)
    assert cache.get(_sha(dark)) is None
    _fill([dark], other)
    entry.write_bytes(other._path(_sha(dark)).read_bytes())  # the same image's entry from another namespace
    assert cache.get(_sha(dark)) is None
    again, fn = _fill([dark], cache)
    assert fn.n == 1
    np.testing.assert_array_equal(again.features[0], truth.features[0])


def test_entry_is_sealed_and_one_changed_byte_fails(two_images, tmp_path):
    dark, _ = two_images
    cache = FeatureCache(tmp_path / "cache", {})
    truth, _ = _fill([dark], cache)
    entry = cache._path(_sha(dark))
    data = entry.read_bytes()
    assert data.startswith(ENTRY_MAGIC)
    np.testing.assert_array_equal(cache.get(_sha(dark)), truth.features[0])
    entry.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert cache.get(_sha(dark)) is None
    entry.write_bytes(b"")
    assert cache.get(_sha(dark)) is None


@pytest.mark.skipif(not hasattr(os, "symlink") or os.name != "posix", reason="symbolic links")
def test_entry_that_is_a_link_is_not_followed(two_images, tmp_path):
    dark, _ = two_images
    cache = FeatureCache(tmp_path / "cache", {})
    _fill([dark], cache)
    entry = cache._path(_sha(dark))
    real = tmp_path / "elsewhere.npy"
    entry.rename(real)
    entry.symlink_to(real)
    assert cache.get(_sha(dark)) is None


def test_full_cache_warns_once_and_the_run_completes(two_images, tmp_path, monkeypatch, capsys):
    dark, light = two_images
    root = tmp_path / "cache"
    cache = FeatureCache(root, {})
    disk = FullDisk(monkeypatch, root, budget=100)  # the first entry does not fit
    out, fn = _fill([dark, light, dark], cache)
    assert fn.n == 3 and out.ok == [0, 1, 2] and not out.errors
    monkeypatch.undo()
    truth, _ = _fill([dark, light], FeatureCache(tmp_path / "fresh", {}))
    np.testing.assert_array_equal(out.features[1], truth.features[1])
    err = capsys.readouterr().err
    assert err.count("warning: feature cache") == 1 and "No space left on device" in err and str(root) in err
    assert disk.budget == 0
    assert not [p for p in root.rglob("*") if p.is_file() and p.name.endswith(".tmp")]


def test_read_only_cache_warns_once_and_the_run_completes(two_images, tmp_path, monkeypatch, capsys):
    dark, light = two_images
    root = tmp_path / "ro-cache"
    root.mkdir()
    read_only(monkeypatch, root)
    out, fn = _fill([dark, light], FeatureCache(root, {}))
    monkeypatch.undo()
    assert fn.n == 2 and out.ok == [0, 1]
    err = capsys.readouterr().err
    assert err.count("warning: feature cache") == 1 and "Read-only file system" in err
    assert list(root.iterdir()) == []
