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


def load_all() -> None:
    """Import every module of this package: each detector and recipe registers itself, so a new detector is one new
    file here and nothing else to edit."""
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


def get_detector(name: str):
    load_all()
    return DETECTORS.get(name)


def detector_names() -> list[str]:
    load_all()
    return DETECTORS.names()
