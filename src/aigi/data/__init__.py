"""Data: discovery and labels (folders), decoding (decode), protocol transforms (transforms)."""

from aigi.data.decode import ImageDecodeError, load_image
from aigi.data.folders import DataError, ImageSet, Sample, discover, unlabelled
from aigi.data.transforms import EvalProtocol, TrainAugment

__all__ = [
    "ImageDecodeError",
    "load_image",
    "DataError",
    "ImageSet",
    "Sample",
    "discover",
    "unlabelled",
    "EvalProtocol",
    "TrainAugment",
]
