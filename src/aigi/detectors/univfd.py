"""UnivFD-style linear probe (Ojha et al., CVPR 2023): a frozen backbone's global feature -> logistic regression.

The original uses CLIP ViT-L/14's image embedding; any registered backbone works here. Training fits a
standardised L2-regularised logistic regression (scikit-learn) on cached features, picks the regularisation
strength on validation data when given, and folds the standardisation into one ``Linear(D, 1)``.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from aigi.backbones.base import Backbone
from aigi.detectors import DETECTORS
from aigi.detectors.base import Detector, DetectorParams, Output, zero_linear
from aigi.engine.trainer import (
    RECIPES,
    BackboneChoice,
    DetectorTrainConfig,
    Recipe,
    Run,
    balanced_weights,
    features_of,
    labelled_or_fail,
    readable_features,
)

PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class UnivFDParams(DetectorParams):
    C: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="inverse L2 strength; None: chosen on validation data from C_grid"
    )
    C_grid: tuple[PositiveFloat, ...] = Field((0.001, 0.01, 0.1, 1.0, 10.0), min_length=1, max_length=100)
    class_weight: Literal["balanced"] | None = "balanced"
    max_iter: int = Field(5000, ge=1, le=10_000_000)


@DETECTORS.register("univfd")
class UnivFD(Detector):
    name = "univfd"
    Params = UnivFDParams
    cacheable = True
    feature_kind = "global"

    def __init__(self, params: UnivFDParams, backbone: Backbone) -> None:
        super().__init__(params, backbone)
        self.head = zero_linear(backbone.dim)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.backbone(pixels).cls

    def score(self, features: torch.Tensor) -> Output:
        return Output(logit=self.head(features.float()).squeeze(-1))

    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        x_val: np.ndarray | None = None,
        y_val: np.ndarray | None = None,
        sample_weight: np.ndarray | None = None,
    ) -> dict:
        """Fit the head on features (each sample weighted by ``sample_weight`` when given); returns what was chosen
        (recorded in the model's config)."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=int)
        mu, sd = standardiser(x)
        z = (x - mu) / sd

        def fit_c(c: float) -> LogisticRegression:
            clf = LogisticRegression(C=c, class_weight=self.params.class_weight, max_iter=self.params.max_iter)
            return clf.fit(z, y, sample_weight=sample_weight)

        info: dict = {"n_train": int(len(y)), "n_train_real": int((y == 0).sum()), "n_train_fake": int((y == 1).sum())}
        if self.params.C is not None:
            best_c = self.params.C
        elif x_val is not None and y_val is not None and len(set(np.asarray(y_val).tolist())) == 2:
            zv = (np.asarray(x_val, dtype=np.float64) - mu) / sd
            aucs = {c: float(roc_auc_score(y_val, fit_c(c).decision_function(zv))) for c in self.params.C_grid}
            best_c = max(aucs, key=aucs.get)
            info["val_auroc_by_C"] = aucs
        else:
            best_c = 1.0
        clf = fit_c(best_c)
        info["C"] = best_c
        w, b = on_raw_inputs(clf, mu, sd)
        with torch.no_grad():
            self.head.weight.copy_(torch.as_tensor(w, dtype=torch.float32)[None])
            self.head.bias.fill_(float(b))
        return info


def standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each column's mean and spread (kept above zero): a logistic regression fitted on ``(x - mu) / sd`` penalises
    every input alike, whatever its scale."""
    return x.mean(0), x.std(0) + 1e-6


def on_raw_inputs(clf: LogisticRegression, mu: np.ndarray, sd: np.ndarray) -> tuple[np.ndarray, float]:
    """The weights and bias of ``clf`` (fitted on ``(x - mu) / sd``) for the raw ``x``: the standardisation folded in,
    so that the model stores one linear map."""
    return clf.coef_[0] / sd, float(clf.intercept_[0] - (clf.coef_[0] * mu / sd).sum())


# -- training recipe -------------------------------------------------------------------------------------------------
class UnivFDTrainConfig(DetectorTrainConfig, BackboneChoice):
    """The probe's recipe: cached global features of the training (and validation) images, then the fit."""

    feature_level: str | None = Field(
        None, description="efficientnet_lite0: head (default), stage6, stage5, stage4, stage3"
    )
    balance: Literal["none", "subset"] = Field(
        "none",
        description="subset: weight training images so that every subset (generator, photo source: a manifest's "
        "subset column or the layout's folders) counts alike within its label",
    )


@RECIPES.register("univfd")
class UnivFDRecipe(Recipe):
    """UnivFD linear probe: frozen backbone global feature -> logistic regression (C chosen on --val)."""

    name = "univfd"
    detector = "univfd"
    Config = UnivFDTrainConfig
    epochs_field = None  # closed form: no epochs
    param_options = ("C",)

    def check(self) -> None:
        self.train_set = labelled_or_fail(self.config.data, "training")
        self.val_set = labelled_or_fail(self.config.val, "validation", need_both=False) if self.config.val else None

    def setup(self, run: Run) -> None:
        from aigi.checkpoints import ModelConfig, build_model

        cfg = self.config
        run.model = build_model(
            ModelConfig(detector="univfd", params=cfg.params, backbone=cfg.backbone_spec(), protocol=cfg.protocol()),
            allow_download=True,  # training: the backbone is the user's choice
        )

    def finish(self, run: Run) -> None:
        x, y, kept = readable_features(run, self.train_set, "train")
        weights = balanced_weights(self.train_set, kept) if self.config.balance == "subset" else None
        xv, yv = features_of(run, self.val_set, "val") if self.val_set is not None else (None, None)
        run.record.update(run.model.detector.fit(x, y, xv, yv, sample_weight=weights))

    @staticmethod
    def describe(result, out) -> str:
        return f"saved {out} (C={result.config.training['C']}, threshold {result.threshold:.4f})"
