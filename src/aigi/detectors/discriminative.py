"""MiraGe's discriminative objective, shared by both MiraGe detectors (:mod:`aigi.detectors.mirage` on CLIP, and
:mod:`aigi.detectors.mirage_anchors` on any backbone): image features that are tight within a class and far apart
between classes, pulled to their class's anchor and pushed from the other's.

What the paper (Shi et al., ACM MM 2025, arXiv 2508.01525) says, as far as its abstract could be read here: "intra-class
variation minimization and inter-class separation", text embeddings as "semantic anchors", multimodal prompt learning,
and a memory bank. Its method section (exact loss terms, weights, temperature, memory size) could not be read on this
machine, so the terms and their defaults below follow the works it builds on, and say which:

- **anchor alignment**: cross-entropy of each image over its cosine similarities to the two anchors (real, fake),
  times the anchor scale; as CLIP's and MaPLe's prompt-learning loss.
- **compactness and separation**: the supervised contrastive loss (Khosla et al., NeurIPS 2020; temperature 0.07)
  over the batch and the memory: every other feature of the image's class is a positive (pulled close: intra-class
  compactness), every feature of the other class a negative (pushed away: inter-class separation).
- **memory bank**: a FIFO queue of the last ``memory_size`` detached features with their labels (Wu et al. 2018, He
  et al. 2020), which gives each batch's contrast more positives and negatives than the batch holds. It is training
  state only (not in the model folder, empty again when a run resumes; per process under DDP).

``anchor_weight=0`` (the ablation without the anchor loss) leaves learned anchors without a gradient: they are then
frozen and set, each step, to the normalised class means of the memory (which holds the batch just seen): a
nearest-class-mean scorer. It needs a memory (``memory_size`` > 0) and learned anchors. Under DDP each process keeps
its own memory, so these means are each process's own; the saved model is the main process's.

A detector that uses the objective is an :class:`AnchoredDetector`; its recipe subclasses :class:`AnchoredRecipe`.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from aigi.detectors.base import Detector, Output
from aigi.engine.pixel_recipe import PixelClassifierRecipe, PixelTrainConfig
from aigi.engine.train_images import param_groups
from aigi.engine.trainer import Run
from aigi.errors import ConfigError

REAL, FAKE = 0, 1  # anchor rows, as the labels


class FeatureMemory:
    """A FIFO queue of the last ``size`` features ``[size, dim]`` and their labels; ``size=0`` keeps nothing."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.features: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.labels is None else len(self.labels)

    def push(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Append detached copies; the oldest beyond ``size`` are dropped."""
        if self.size == 0:
            return
        features, labels = features.detach().float(), labels.detach().long()
        if self.features is not None:
            features = torch.cat([self.features, features])
            labels = torch.cat([self.labels, labels])
        self.features, self.labels = features[-self.size :], labels[-self.size :]

    def contents(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored features and labels, on ``like``'s device (empty tensors when nothing is stored)."""
        if self.features is None:
            return like.new_zeros(0, like.shape[1]), torch.zeros(0, dtype=torch.long, device=like.device)
        return self.features.to(like.device), self.labels.to(like.device)


def anchor_alignment(features: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor, scale) -> torch.Tensor:
    """Cross-entropy over ``scale * cos(feature, anchor)`` for the anchors (real, fake); inputs are normalised."""
    return F.cross_entropy(scale * features @ anchors.T, labels.long())


def supervised_contrast(
    features: torch.Tensor,
    labels: torch.Tensor,
    bank: torch.Tensor | None = None,
    bank_labels: torch.Tensor | None = None,
    temperature: float = 0.07,
) -> torch.Tensor:
    """The supervised contrastive loss of each feature (a query) against the others and the bank (the keys):
    ``-mean over positives p of log(exp(s_p / t) / sum over keys k != itself of exp(s_k / t))``; queries without a
    positive are left out (0 when none has one). Inputs are normalised."""
    labels = labels.long()
    keys = features if bank is None or not len(bank) else torch.cat([features, bank.to(features.dtype)])
    key_labels = labels if bank_labels is None or not len(bank_labels) else torch.cat([labels, bank_labels.long()])
    logits = features @ keys.T / temperature
    itself = torch.zeros_like(logits, dtype=torch.bool)
    itself[:, : len(features)] = torch.eye(len(features), dtype=torch.bool, device=features.device)
    logits = logits.masked_fill(itself, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (labels[:, None] == key_labels[None, :]) & ~itself
    counts = positive.sum(1)
    has = counts > 0
    if not has.any():
        return features.sum() * 0.0
    per_query = -(log_prob.masked_fill(~positive, 0.0).sum(1)[has] / counts[has])
    return per_query.mean()


class DiscriminativeObjective:
    """The weighted sum of the anchor alignment and the supervised contrast (with the memory), and the memory's
    update after each batch; see the module docstring."""

    def __init__(self, anchor_weight: float, contrast_weight: float, temperature: float, memory_size: int) -> None:
        self.anchor_weight = anchor_weight
        self.contrast_weight = contrast_weight
        self.temperature = temperature
        self.memory = FeatureMemory(memory_size)

    def __call__(self, features, labels, anchors, scale) -> tuple[torch.Tensor, dict[str, float]]:
        bank, bank_labels = self.memory.contents(features)
        total, parts = features.sum() * 0.0, {}
        if self.anchor_weight:
            align = anchor_alignment(features, labels, anchors, scale)
            total, parts["anchor_loss"] = total + self.anchor_weight * align, float(align.detach())
        if self.contrast_weight:
            contrast = supervised_contrast(features, labels, bank, bank_labels, self.temperature)
            total, parts["contrast_loss"] = total + self.contrast_weight * contrast, float(contrast.detach())
        self.memory.push(features, labels)
        return total, parts

    def class_means(self, like: torch.Tensor) -> torch.Tensor | None:
        """Normalised mean feature of each class over the memory ``[2, dim]`` (None until both classes are in it)."""
        bank, bank_labels = self.memory.contents(like)
        if not ((bank_labels == REAL).any() and (bank_labels == FAKE).any()):
            return None
        return F.normalize(torch.stack([bank[bank_labels == c].mean(0) for c in (REAL, FAKE)]), dim=-1)


class AnchoredDetector(Detector):
    """A detector scored by cosine similarity to two class anchors: ``logit = scale * (cos(f, fake) - cos(f, real))``.

    Subclasses give ``embed(pixels)`` (normalised features ``[B, E]``), ``anchors()`` (normalised ``[2, E]``, rows
    real then fake) and ``scale()``; ``learned_anchors`` says whether ``anchors()`` reads a trained parameter
    ``anchor_weights`` (which the ablation without the anchor loss sets to class means)."""

    feature_kind = "global"
    cacheable = False  # features come through trained weights (prompts, adapters, fine-tuned blocks)
    cache_variant = None
    learned_anchors: bool = False

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def anchors(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def scale(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.embed(pixels)

    def score(self, features: torch.Tensor) -> Output:
        return Output(logit=self.anchor_logits(features.float()))

    def anchor_logits(self, features: torch.Tensor, anchors: torch.Tensor | None = None) -> torch.Tensor:
        """``scale * (cos to fake - cos to real)`` of normalised features ``[..., E]`` (``anchors``: already computed)."""
        anchors = self.anchors() if anchors is None else anchors
        return self.scale() * features @ (anchors[FAKE] - anchors[REAL])

    def training_outputs(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What the objective reads: ``(features, anchors, scale)``."""
        return self.embed(pixels), self.anchors(), self.scale()


class AnchoredTraining(nn.Module):
    """The detector's training forward pass as one module, so DDP sees it: pixels -> (features, anchors, scale)."""

    def __init__(self, detector: AnchoredDetector) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, pixels: torch.Tensor):
        return self.detector.training_outputs(pixels)


class AnchoredTrainConfig(PixelTrainConfig):
    """The objective's settings (see the module docstring for where each default comes from)."""

    anchor_weight: float = Field(1.0, ge=0, description="weight of the anchor alignment loss (0: ablate it)")
    contrast_weight: float = Field(
        1.0, ge=0, description="weight of the compactness/separation (supervised contrastive) loss (0: ablate it)"
    )
    contrast_temperature: float = Field(0.07, gt=0, description="temperature of the supervised contrast")
    memory_size: int = Field(
        1024, ge=0, le=1_000_000, description="features kept in the FIFO memory bank (0: the batch only)"
    )
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="adamw, or sgd with momentum 0.9 (MaPLe's)")
    weight_decay: float = Field(1e-4, ge=0, description="weight decay of either optimizer (none on biases and norms)")


class AnchoredRecipe(PixelClassifierRecipe):
    """Train an :class:`AnchoredDetector` on augmented pixels with the discriminative objective; everything else
    (data, balanced epochs, schedule, resume, validation, calibration) is the pixel-classifier recipe's."""

    Config = AnchoredTrainConfig

    text_anchors: bool = False  # the recipe's detector always takes its anchors from a text tower

    def check(self) -> None:
        super().check()
        cfg = self.config
        if cfg.anchor_weight == 0 and cfg.contrast_weight == 0:
            raise ConfigError(f"{self.name}: anchor_weight and contrast_weight are both 0: nothing would learn")
        if cfg.anchor_weight == 0 and cfg.memory_size == 0:
            raise ConfigError(
                f"{self.name}: anchor_weight 0 sets the anchors to the memory's class means: memory_size > 0"
            )
        text = self.text_anchors or cfg.backbone_spec().family == "hf_clip"
        if cfg.anchor_weight == 0 and text:
            raise ConfigError(
                f"{self.name}: anchor_weight 0 needs learned anchors; on CLIP they come from its text tower"
            )

    def make_optimizer(self, detector) -> torch.optim.Optimizer:
        cfg = self.config
        if cfg.anchor_weight == 0:  # the anchors follow the class means: no gradient, no optimizer state
            detector.anchor_weights.requires_grad_(False)
        if cfg.optimizer == "adamw":
            return super().make_optimizer(detector)
        return torch.optim.SGD(param_groups(detector, cfg.weight_decay, self.lr_scales()), lr=cfg.lr, momentum=0.9)

    def setup(self, run: Run) -> None:
        super().setup(run)
        cfg = self.config
        self.anchored = run.model.detector
        run.module = AnchoredTraining(self.anchored)
        self.objective = DiscriminativeObjective(
            cfg.anchor_weight, cfg.contrast_weight, cfg.contrast_temperature, cfg.memory_size
        )

    def loss(self, run: Run, batch):
        x, y, _ = batch
        features, anchors, scale = run.module(x)
        labels = y.to(features.device)
        total, parts = self.objective(features.float(), labels, anchors.float(), scale)
        if not self.config.anchor_weight:
            self._anchors_to_class_means(features)
        return total, len(y), parts

    def _anchors_to_class_means(self, like: torch.Tensor) -> None:
        means = self.objective.class_means(like)
        if means is not None:
            with torch.no_grad():
                self.anchored.anchor_weights.copy_(means.to(self.anchored.anchor_weights))
