"""Labelled training images for recipes that train on pixels (MIRROR Phase 2, the fine-tuned CNN): a dataset that
decodes and augments each image, the per-epoch orders (a plain shuffle, or a draw that balances subsets), the batch
collation that keeps unreadable files out, and AdamW's parameter groups.

Every random draw is seeded from ``(seed, epoch, index)`` alone, so a resumed run sees the batches an uninterrupted
one would have seen.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import Dataset

from aigi.data.decode import ImageDecodeError, load_image
from aigi.engine.train_state import warmup_cosine


class TrainImages(Dataset):
    """Labelled images through a training augmentation (anything with ``apply(im, label, pre, rng) -> tensor``);
    an unreadable file yields ``None`` and its reason instead."""

    def __init__(self, samples: list, augment, pre, seed: int) -> None:
        self.samples, self.augment, self.pre, self.seed, self.epoch = samples, augment, pre, seed, 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        s = self.samples[i]
        rng = random.Random(f"{self.seed}/{self.epoch}/{i}")
        try:
            dec = load_image(s.path)
            return self.augment.apply(dec.image, int(s.label), self.pre, rng), int(s.label), ""
        except ImageDecodeError as e:
            return None, int(s.label), f"{s.path}: {e.reason}"
        except Exception as e:  # noqa: BLE001 - one bad file must not stop training
            return None, int(s.label), f"{s.path}: could not prepare image ({type(e).__name__}: {e})"


def collate_images(items):
    """``(pixels [B,3,S,S] or None, labels [B] or None, reasons the other files could not be used)``."""
    ok = [(x, y) for x, y, err in items if x is not None]
    errors = [err for x, y, err in items if x is None]
    if not ok:
        return None, None, errors
    return torch.stack([x for x, _ in ok]), torch.tensor([y for _, y in ok]), errors


class EpochShuffle(torch.utils.data.Sampler):
    """A fresh permutation per epoch, drawn from ``(seed, epoch)`` alone: a resumed run sees the same batches as
    an uninterrupted one. Every DDP process draws the same order; accelerate splits the batches between them.
    (Not called ``set_epoch``: accelerate would call that itself with its own count of passes in this process,
    which restarts at 0 on resume. Nor ``generator``: accelerate syncs a sampler's ``generator`` attribute across
    processes as a torch.Generator.)"""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def use_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def epoch_generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=self.epoch_generator()).tolist())


class BalancedEpochDraw(EpochShuffle):
    """An epoch of ``len(weights)`` indices drawn with replacement in proportion to ``weights`` (e.g.
    :func:`aigi.engine.trainer.balanced_weights`, so that no generator or photo source dominates), seeded like
    :class:`EpochShuffle`."""

    def __init__(self, weights: np.ndarray, seed: int) -> None:
        super().__init__(len(weights), seed)
        self.weights = torch.as_tensor(np.asarray(weights, dtype=np.float64))

    def __iter__(self):
        return iter(
            torch.multinomial(self.weights, self.n, replacement=True, generator=self.epoch_generator()).tolist()
        )


def param_groups(module: torch.nn.Module, weight_decay: float, lr_scales: dict[str, float] | None = None) -> list[dict]:
    """AdamW groups: no weight decay on biases and 1-D weights (norms), as MIRROR's optimizer factory does.
    ``lr_scales`` maps a parameter-name prefix to a multiple of the schedule's learning rate (``lr_scale``, which the
    trainer honours each step), e.g. a fresh head faster than a pretrained backbone. Without it: exactly two groups,
    decayed then not (the layout saved training states hold)."""
    lr_scales = lr_scales or {}
    groups: dict[tuple, list] = {(1.0, True): [], (1.0, False): []}
    for name, p in module.named_parameters():
        if p.requires_grad:
            scale = next((v for k, v in lr_scales.items() if name.startswith(k)), 1.0)
            groups.setdefault((scale, not (p.ndim <= 1 or name.endswith(".bias"))), []).append(p)
    return [
        {
            "params": params,
            "weight_decay": weight_decay if decay else 0.0,
            **({"lr_scale": scale} if scale != 1 else {}),
        }
        for (scale, decay), params in groups.items()
        if params or scale == 1
    ]


class PixelEpochs:
    """The epoch, learning-rate and empty-batch steps of a recipe that trains on augmented pixels (MIRROR Phase 2, the
    fine-tuned CNN); mixed in before :class:`aigi.engine.trainer.Recipe`. The recipe's ``setup`` sets ``dataset`` (a
    :class:`TrainImages`), ``order`` (its epoch sampler) and ``base_lr``; its config has ``seed``, ``epochs``,
    ``warmup_epochs`` and ``min_lr``."""

    dataset: TrainImages
    order: EpochShuffle
    base_lr: float

    def start_epoch(self, run, epoch: int) -> None:
        self.dataset.epoch = epoch
        self.order.use_epoch(epoch)
        # dropout: a resumed epoch draws what it would have; each DDP process its own stream
        torch.manual_seed((self.config.seed * 1_000_003 + epoch) * 64 + run.accelerator.process_index)
        run.model.detector.train()

    def lr(self, run, epoch: int, step: int, steps: int) -> float:
        """A linear warm-up then a cosine to ``min_lr``, per step."""
        cfg = self.config
        return warmup_cosine(
            epoch * steps + step, cfg.epochs * steps, int(cfg.warmup_epochs * steps), self.base_lr, cfg.min_lr
        )

    def empty(self, run, batch) -> bool:
        run.skipped.update(batch[2])
        return batch[0] is None
