"""What a resumable training run keeps on disk, without pickle: optimizer state as safetensors + JSON, a
JSON-lines log, and the learning-rate schedules the recipes use."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from aigi.io import bytes_writer, json_writer, write_set

STATE_TENSORS = "optimizer.safetensors"
STATE_JSON = "train_state.json"


def save_train_state(folder: str | os.PathLike, optimizer: torch.optim.Optimizer, epoch: int) -> None:
    """Write the optimizer's tensors and the finished ``epoch`` atomically (the epoch goes in both files, so a
    save cut short between them is detected on resume)."""
    from aigi.checkpoints import safetensors_bytes

    folder = Path(folder)
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{name}"] = value
    state = {"param_groups": sd["param_groups"], "scalars": scalars, "epoch": epoch}
    write_set(
        folder,
        {
            STATE_TENSORS: bytes_writer(safetensors_bytes(tensors, {"epoch": str(epoch)})),
            STATE_JSON: json_writer(state),
        },
    )


def load_train_state(folder: str | os.PathLike, optimizer: torch.optim.Optimizer, weights_epoch: str | None) -> int:
    """Restore the optimizer from ``folder`` and return the epoch it finished. ``weights_epoch`` is the epoch
    recorded with the saved weights: all three must agree, or the folder is refused (a save was cut short)."""
    from aigi.checkpoints import ModelLoadError, read_safetensors

    folder = Path(folder)
    try:
        meta = json.loads((folder / STATE_JSON).read_text())
        tensors, header = read_safetensors(folder / STATE_TENSORS)
        epoch, param_groups, scalars = int(meta["epoch"]), meta["param_groups"], meta["scalars"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelLoadError(
            f"{folder}: unreadable training state ({type(e).__name__}: {e}); use a new --out folder"
        ) from None
    if header.get("epoch") != str(epoch) or weights_epoch != str(epoch):
        raise ModelLoadError(
            f"{folder}: the last save was cut short (weights from epoch {weights_epoch}, optimizer from epoch "
            f"{header.get('epoch')}, progress file says {epoch}); use a new --out folder"
        )
    state: dict[int, dict] = {}
    for key, value in [*tensors.items(), *scalars.items()]:
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    try:
        optimizer.load_state_dict({"state": state, "param_groups": param_groups})
    except (ValueError, KeyError) as e:
        raise ModelLoadError(
            f"{folder}: the optimizer state does not fit this model ({e}); use a new --out folder"
        ) from None
    return epoch


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
