"""Per-image heatmaps: where in the analysed crop a detector's per-patch evidence lies.

For MIRROR the map is the residual norm ``|| token - reconstruction ||`` per patch: high where the image is far
from what the memory of real images can rebuild. The PNG shows the crop the model saw (after the evaluation
protocol) beside the same crop with the map laid over it, and the score in the title. With a multi-view protocol the
score combines every view, as ``detect`` does, and the map is the first view's (the centre crop; a grid's top-left
tile).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from aigi.checkpoints import Model
from aigi.data.decode import ImageInput, load_image
from aigi.engine.features import extract
from aigi.engine.inference import Scores, logit_scores
from aigi.errors import ConfigError
from aigi.names import shown


class NoPatchMapError(ConfigError):
    pass


def explain_inputs(
    model: Model, inputs: Sequence[ImageInput], batch_size: int = 8, progress: bool = True
) -> tuple[Scores, dict[int, bytes], dict[int, np.ndarray]]:
    """Score every image and draw one heatmap PNG per readable image; returns the scores, the PNG bytes and the raw
    per-patch maps (rows x columns of the analysed crop), by index (writing them is the caller's business)."""
    det = model.detector
    if det.patch_map_label is None:
        raise NoPatchMapError(
            f"the {model.config.detector} model gives no per-patch map, so --explain has nothing to draw"
        )
    grid = det.patch_grid()
    device = model.device

    def run(px: torch.Tensor) -> torch.Tensor:
        o = det(px.to(device))
        return torch.cat([o.logit[:, None].float(), o.patch_map.flatten(1).float()], 1)

    ext = extract(
        inputs,
        run,
        det.backbone.preprocess,
        model.config.protocol,
        cache=None,
        batch_size=batch_size,
        description="scoring + heatmaps",
        progress=progress,
    )
    scores = logit_scores(ext, lambda rows: rows[:, 0], model.config.protocol)
    scores.prob = model.calibrated(scores.prob)
    pngs: dict[int, bytes] = {}
    maps = {i: ext.first_view(i)[1:].reshape(grid) for i in map(int, np.flatnonzero(scores.ok))}
    for i in maps:
        try:
            dec = load_image(ext.inputs[i])
            crop = model.config.protocol.apply_pil(dec.image, dec.format, det.backbone.preprocess)
        except Exception as e:  # noqa: BLE001 - the score stands even if the picture cannot be drawn
            scores.errors[i] = f"scored, but the heatmap could not be drawn ({e})"
            continue
        title = shown(Path(str(ext.inputs[i])).name)
        pngs[i] = render(crop, maps[i], scores.prob[i], title, det.patch_map_label)
    return scores, pngs, maps


def heatmap_file_name(path: str) -> str:
    """A file name for an image's heatmap, unique per input path: ``<stem>_<8 hex digits>.png`` (the stem's bytes
    as they are, non-UTF-8 ones included: the name is for the file system, which took them for the image)."""
    return f"{Path(path).stem}_{hashlib.sha256(os.fsencode(path)).hexdigest()[:8]}.png"


def render(crop, patch_map: np.ndarray, prob: float, title: str, label: str = "per-patch evidence") -> bytes:
    """PNG bytes: the crop, and the crop under the per-patch map (nearest-neighbour upsampled, so patches stay visible)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = np.asarray(crop)
    h, w = img.shape[:2]
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.3), dpi=100)
    axes[0].imshow(img)
    axes[0].set_title("analysed crop", fontsize=9)
    axes[1].imshow(img)
    shown = axes[1].imshow(patch_map, cmap="inferno", alpha=0.55, extent=(0, w, h, 0), interpolation="nearest")
    axes[1].set_title(label, fontsize=9)
    fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.04)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(f"{title}  P(generated) = {prob:.3f}", fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
