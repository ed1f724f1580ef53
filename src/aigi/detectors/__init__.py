"""Detectors: one file per method, joined to :data:`DETECTORS` by name.

- ``univfd``: frozen backbone global feature -> logistic regression (:mod:`aigi.detectors.univfd`).
- ``mirror``: patch tokens vs their reconstruction from a memory of real images (:mod:`aigi.detectors.mirror`,
  memory in :mod:`aigi.detectors.memory_bank`).
- ``mdmf``: MMD between an image's projected patches and a reference bank of real images (:mod:`aigi.detectors.mdmf`,
  estimators in :mod:`aigi.detectors.mmd`).
"""

from __future__ import annotations

from aigi.registry import Registry

DETECTORS: Registry = Registry("detector")


def _load_all() -> None:
    from aigi.detectors import mdmf, mirror, univfd  # noqa: F401  (register themselves)


def get_detector(name: str):
    _load_all()
    return DETECTORS.get(name)


def detector_names() -> list[str]:
    _load_all()
    return DETECTORS.names()
