"""What a resumable training run keeps on disk, without pickle: optimizer state as safetensors + JSON, a
JSON-lines log, and the learning-rate schedules the recipes use."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from aigi.io import atomic_write, write_json

STATE_TENSORS = "optimizer.safetensors"
STATE_JSON = "train_state.json"


def save_train_state(folder: str | os.PathLike, optimizer: torch.optim.Optimizer, info: dict) -> None:
    """Write the optimizer's tensors and the run's progress (``info``: epoch, step, ...) atomically."""
    folder = Path(folder)
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{name}"] = value
    atomic_write(folder / STATE_TENSORS, lambda tmp: save_file(tensors, tmp))
    write_json(folder / STATE_JSON, {"param_groups": sd["param_groups"], "scalars": scalars, **info})


def load_train_state(folder: str | os.PathLike, optimizer: torch.optim.Optimizer) -> dict | None:
    """Restore the optimizer from ``folder``; returns the saved ``info`` or None when there is nothing to resume."""
    folder = Path(folder)
    if not (folder / STATE_JSON).is_file() or not (folder / STATE_TENSORS).is_file():
        return None
    meta = json.loads((folder / STATE_JSON).read_text())
    tensors = load_file(str(folder / STATE_TENSORS))
    state: dict[int, dict] = {}
    for key, value in [*tensors.items(), *meta.pop("scalars").items()]:
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta.pop("param_groups")})
    return meta


class JsonLog:
    """Append one JSON object per line; each line is flushed as it is written."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **record) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, allow_nan=True) + "\n")


def warmup_cosine(step: int, total: int, warmup: int, base_lr: float, min_lr: float) -> float:
    """Linear warm-up over ``warmup`` steps, then half a cosine from ``base_lr`` down to ``min_lr``."""
    if step < warmup:
        return base_lr * step / max(1, warmup)
    t = (step - warmup) / max(1, total - warmup)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
