"""The recipe shared by detectors trained as pixel classifiers (the fine-tuned CNN, NPR, the local-patch detector):
augmented training crops (:class:`aigi.data.augment.ForensicAugment`), an epoch drawn so that every generator and
photo source counts alike, AdamW with a linear warm-up then a cosine, binary cross-entropy on the detector's
``training_logits`` (one logit per image, or one per patch with the image's label on every patch), resumable through
the common trainer.

A detector's recipe subclasses :class:`PixelClassifierRecipe` and says which backbone and protocol its model
records (``model_config``) and which parameters learn faster (``lr_scales``); its config subclasses
:class:`PixelTrainConfig` with its own defaults. Detectors trained from scratch on pixel traces subclass
:class:`NativePixelRecipe`: the ``pixels`` backbone and a protocol that never resizes.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn
from torch.utils.data import DataLoader

from aigi.backbones.base import MAX_IMAGE_SIDE
from aigi.data.augment import ForensicAugment
from aigi.engine.train_images import (
    BalancedEpochDraw,
    EpochShuffle,
    PixelEpochs,
    TrainImages,
    collate_images,
    param_groups,
)
from aigi.engine.trainer import DetectorTrainConfig, Recipe, Run, balanced_weights, labelled_or_fail, resume_model


class PixelTrainConfig(DetectorTrainConfig):
    """Settings every pixel-classifier recipe has; a recipe's config overrides the defaults."""

    epochs: int = Field(4, ge=1, description="passes over the training images (each a balanced draw)")
    batch_size: int = Field(32, ge=1, description="images per step and device")
    lr: float = Field(1e-4, gt=0, description="peak AdamW learning rate")
    min_lr: float = Field(1e-6, ge=0, description="learning rate at the end of the cosine")
    warmup_epochs: float = Field(0.25, ge=0, description="linear warm-up, in epochs")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay (none on biases and norms)")
    balance: Literal["none", "subset"] = Field(
        "subset",
        description="subset: draw each epoch's images so that every subset (generator, photo source: a manifest's "
        "subset column or the layout's folders) counts alike within its label; none: a plain shuffle",
    )
    augment: ForensicAugment = Field(default_factory=ForensicAugment)
    num_workers: int = Field(1, ge=0, description="data-loading worker processes")


class TrainingLogits(nn.Module):
    """The detector's trainable forward pass as one module, so DDP sees it: pixels -> ``training_logits``."""

    def __init__(self, detector) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.detector.training_logits(pixels)


def image_labels_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of logits [B] or [B, ...] (per patch) against each image's label."""
    target = labels.float().reshape(-1, *[1] * (logits.ndim - 1)).expand_as(logits)
    return F.binary_cross_entropy_with_logits(logits.float(), target)


class PixelClassifierRecipe(PixelEpochs, Recipe):
    """Train a detector end to end on augmented pixels (see the module docstring)."""

    Config = PixelTrainConfig

    def model_config(self):
        """The :class:`aigi.checkpoints.ModelConfig` of the model this recipe trains: by default the backbone and
        protocol its config chooses (a :class:`aigi.engine.trainer.BackboneChoice`)."""
        from aigi.checkpoints import ModelConfig

        cfg = self.config
        spec, protocol = cfg.backbone_spec(), cfg.protocol()
        return ModelConfig(detector=self.detector, params=cfg.params, backbone=spec, protocol=protocol)

    def lr_scales(self) -> dict[str, float]:
        """Parameter-name prefixes that learn at a multiple of the learning rate (e.g. a fresh head)."""
        return {}

    def train_preprocess(self, detector):
        """The side and normalisation of the training crops: by default the backbone's."""
        return detector.backbone.preprocess

    def check(self) -> None:
        self.train_set = labelled_or_fail(self.config.data, "training")
        if self.config.val is not None:
            labelled_or_fail(self.config.val, "validation", need_both=False)

    def setup(self, run: Run) -> None:
        from aigi.checkpoints import build_model

        cfg = self.config
        run.model = build_model(self.model_config(), allow_download=True)  # training: the backbone is the user's choice
        det = run.model.detector
        samples = self.train_set.samples
        self.dataset = TrainImages(samples, cfg.augment, self.train_preprocess(det), cfg.seed)
        if cfg.balance == "subset":
            self.order = BalancedEpochDraw(balanced_weights(self.train_set, list(range(len(samples)))), cfg.seed)
        else:
            self.order = EpochShuffle(len(samples), cfg.seed)
        run.loader = DataLoader(
            self.dataset,
            batch_size=cfg.batch_size,
            sampler=self.order,
            drop_last=len(samples) > cfg.batch_size,
            num_workers=cfg.num_workers,
            collate_fn=collate_images,
        )
        run.module = TrainingLogits(det)
        self.base_lr = cfg.lr
        run.optimizer = self.make_optimizer(det)

    def make_optimizer(self, detector) -> torch.optim.Optimizer:
        """AdamW over the detector's trainable parameters (``lr_scales`` honoured); a recipe may choose another."""
        cfg = self.config
        return torch.optim.AdamW(param_groups(detector, cfg.weight_decay, self.lr_scales()), lr=cfg.lr)

    def resume_from(self, run: Run) -> int:
        return resume_model(run)

    def loss(self, run: Run, batch):
        x, y, _ = batch
        return image_labels_bce(run.module(x), y), len(y), {}


class NativePixelTrainConfig(PixelTrainConfig):
    """Settings of detectors that read the pixels as the generator left them (NPR, the local-patch detector): trained
    from scratch on the ``pixels`` backbone, on crops cut at native resolution (``augment.crop``; 128 pixels by
    default, about three times cheaper per image than 224 on a CPU: the networks are fully convolutional, so they
    score larger crops as they are), scored on ``crop``-sized views by a protocol that never resizes
    (``resample=false``)."""

    crop: int = Field(224, ge=8, le=MAX_IMAGE_SIDE, description="scoring side: the views the model scores")
    augment: ForensicAugment = Field(default_factory=lambda: ForensicAugment(crop=128))
    format_align: bool = Field(
        True, strict=True, description="evaluation protocol: re-encode lossless inputs as JPEG q96 (as the data is)"
    )

    @model_validator(mode="after")
    def _training_crops_fit(self) -> "NativePixelTrainConfig":
        if self.augment.crop > self.crop:
            raise ValueError(f"augment.crop {self.augment.crop} must not exceed crop {self.crop}")
        return self


class NativePixelRecipe(PixelClassifierRecipe):
    """A pixel classifier on the ``pixels`` backbone with a protocol that never resizes."""

    Config = NativePixelTrainConfig

    def train_preprocess(self, detector):
        """Crops of ``augment.crop`` pixels, never resized (``ForensicAugment`` resizes only to another side)."""
        return detector.backbone.preprocess.model_copy(update={"size": self.config.augment.crop})

    def model_config(self):
        from aigi.backbones import BackboneSpec, Preprocess
        from aigi.checkpoints import ModelConfig
        from aigi.data.transforms import EvalProtocol

        cfg = self.config
        return ModelConfig(
            detector=self.detector,
            params=cfg.params,
            backbone=BackboneSpec(family="pixels", preprocess=Preprocess(size=cfg.crop)),
            protocol=EvalProtocol(max_short_side=None, crop=cfg.crop, format_align=cfg.format_align, resample=False),
        )
