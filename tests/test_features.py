"""The feature cache: keyed by file content and settings, reused across runs, never trusted when damaged."""

import numpy as np
from PIL import Image

from aigi.backbones.base import Preprocess
from aigi.data.transforms import EvalProtocol
from aigi.engine.features import FeatureCache, extract


def _img(path, value):
    Image.new("RGB", (40, 30), (value, value, value)).save(path)
    return path


class Counter:
    def __init__(self):
        self.n = 0

    def __call__(self, x):
        self.n += len(x)
        return x.mean((2, 3))


def test_cache_hits_by_content_not_name(tmp_path):
    a = _img(tmp_path / "a.png", 10)
    b = _img(tmp_path / "b.png", 200)
    pre, proto = Preprocess(size=32), EvalProtocol(crop=32)
    cache = FeatureCache(tmp_path / "cache", {"backbone": "x"})
    fn = Counter()
    first = extract([a, b], fn, pre, proto, cache=cache, progress=False)
    assert fn.n == 2 and first.cache_hits == 0
    (tmp_path / "copy.png").write_bytes(a.read_bytes())
    second = extract([tmp_path / "copy.png", b], fn, pre, proto, cache=cache, progress=False)
    assert fn.n == 2 and second.cache_hits == 2
    np.testing.assert_array_equal(second.features[0], first.features[0])
    # other settings -> other namespace -> recomputed
    other = FeatureCache(tmp_path / "cache", {"backbone": "y"})
    extract([a], fn, pre, proto, cache=other, progress=False)
    assert fn.n == 3


def test_damaged_cache_entry_is_recomputed(tmp_path):
    a = _img(tmp_path / "a.png", 10)
    pre, proto = Preprocess(size=32), EvalProtocol(crop=32)
    cache = FeatureCache(tmp_path / "cache", {})
    fn = Counter()
    extract([a], fn, pre, proto, cache=cache, progress=False)
    entry = next((tmp_path / "cache").rglob("*.npy"))
    entry.write_bytes(b"garbage")
    again = extract([a], fn, pre, proto, cache=cache, progress=False)
    assert fn.n == 2 and again.cache_hits == 0 and again.features[0] is not None


def test_errors_are_per_file_and_order_is_kept(tmp_path):
    files = [_img(tmp_path / f"{i}.png", i * 20) for i in range(5)]
    (tmp_path / "bad.jpg").write_bytes(b"xx")
    paths = files[:2] + [tmp_path / "bad.jpg"] + files[2:]
    out = extract(
        paths,
        lambda x: x.mean((1, 2, 3))[:, None],
        Preprocess(size=16, mean=(0, 0, 0), std=(1, 1, 1)),
        EvalProtocol(crop=16),
        batch_size=2,
        num_workers=0,
        progress=False,
    )
    assert list(out.errors) == [2] and "not an image" in out.errors[2]
    vals = [float(f[0]) for f in out.features if f is not None]
    assert vals == sorted(vals)  # grey levels 0, 20, 40, ... in order
    assert len(out.ok) == 5
