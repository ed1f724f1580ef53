"""EfficientNet-Lite0: the packaged ImageNet weights load onto our network and classify real photos sensibly."""

import pytest
import torch
from PIL import Image

from aigi.backbones import BackboneSpec, build_backbone
from aigi.backbones.efficientnet import (
    EfficientNetLite0,
    EfficientNetLite0Backbone,
    load_packaged_weights,
)
from aigi.data.transforms import EvalProtocol

skimage_data = pytest.importorskip("skimage.data")

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
CUP_CLASSES = {504, 967, 968}  # coffee mug, espresso, cup


@pytest.fixture(scope="module")
def net():
    return load_packaged_weights(EfficientNetLite0()).eval()


def _pixels(arr):
    pre = EfficientNetLite0Backbone(pretrained=False).preprocess
    im = Image.fromarray(arr).convert("RGB")
    im = im.resize((round(im.width * 256 / min(im.size)), round(im.height * 256 / min(im.size))), Image.BICUBIC)
    return EvalProtocol().apply(im, "PNG", pre)[None]


def test_cat_photo_is_a_cat(net):
    with torch.no_grad():
        top = net(_pixels(skimage_data.chelsea())).softmax(-1).topk(3).indices[0].tolist()
    assert top[0] in CAT_CLASSES and set(top) <= CAT_CLASSES


def test_coffee_photo_is_a_cup(net):
    with torch.no_grad():
        top1 = int(net(_pixels(skimage_data.coffee())).argmax())
    assert top1 in CUP_CLASSES


def test_weights_are_checked_against_the_network(tmp_path):
    bad = {"conv.weight": torch.zeros(3)}
    path = tmp_path / "bad.pth"
    torch.save(bad, path)
    with pytest.raises(ValueError, match="tensors"):
        load_packaged_weights(EfficientNetLite0(), str(path))


@pytest.mark.parametrize("level,dim,grid", [("head", 1280, 7), ("stage6", 320, 7), ("stage4", 112, 14)])
def test_tokens_contract(level, dim, grid):
    bb = build_backbone(
        BackboneSpec(family="efficientnet_lite0", options={"feature_level": level, "pretrained": False})
    )
    tok = bb(torch.randn(2, 3, 224, 224))
    assert tok.patches.shape == (2, grid * grid, dim)
    assert tok.cls.shape == (2, dim)
    assert tok.grid == (grid, grid)
    assert torch.allclose(tok.cls, tok.patches.mean(1), atol=1e-5)
    assert bb.preprocess.mean == (0.5, 0.5, 0.5) and bb.preprocess.std == (0.5, 0.5, 0.5)
    assert not any(p.requires_grad for p in bb.parameters())


def test_unknown_option_and_family():
    with pytest.raises(ValueError, match="feature_level"):
        build_backbone(
            BackboneSpec(family="efficientnet_lite0", options={"feature_level": "stage9", "pretrained": False})
        )
    with pytest.raises(KeyError, match="did you mean 'efficientnet_lite0'"):
        build_backbone(BackboneSpec(family="efficientnet_lite"))
