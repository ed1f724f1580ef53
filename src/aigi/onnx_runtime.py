"""ONNX export of a detector, and scoring through onnxruntime (issue #16).

    aigi export onnx --model DIR --out DIR/model.onnx      # the detector's graph: pixels [batch, 3, H, W] -> logit
    aigi detect photos/ --runtime onnx                      # the same verdicts through onnxruntime

The graph covers the detector's forward pass from the preprocessed pixels (the decoding, the evaluation protocol and
the normalisation stay in aigi, shared with PyTorch), with a dynamic batch axis; its outputs are ``logit`` and, for
detectors with a per-patch map, ``patch_map``. ``--runtime onnx`` uses the folder's ``model.onnx`` when it has one,
else exports once into the cache (``$AIGI_CACHE_DIR``, keyed by the model's id) and reuses it. A stack is exported
member by member (``aigi export onnx`` on each member folder).

The default runtime, ``auto``, is onnxruntime for the shipped model (exported into the cache on first use: about
twice PyTorch's images/s on a CPU, logits within 1e-5, see ``benchmarks/onnx_speed.py``) and wherever a model folder
holds a ``model.onnx`` stamped with its weights' id, and PyTorch everywhere else.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

from aigi.checkpoints import STACK, Model, default_model_path
from aigi.detectors.base import Output
from aigi.errors import ConfigError
from aigi.io import atomic_write

OPSET = 17


class _Graph(torch.nn.Module):
    """The detector's forward pass with plain tensor outputs (what the exporter traces)."""

    def __init__(self, detector: torch.nn.Module) -> None:
        super().__init__()
        self.detector = detector
        self.with_map = detector.patch_map_label is not None

    def forward(self, pixels: torch.Tensor):
        out = self.detector(pixels)
        return (out.logit, out.patch_map) if self.with_map else out.logit


def export(model: Model, out: str | os.PathLike, opset: int = OPSET) -> Path:
    """Write ``model``'s detector as ONNX (dynamic batch) to ``out``, atomically."""
    if model.config.detector == STACK:
        raise ConfigError("a stack has no single graph: export each member folder (members/<k>-<name>/)")
    try:
        import onnx  # noqa: F401 - torch's exporter and the stamp need it
    except ImportError:
        raise ConfigError("exporting to ONNX needs the onnx package: pip install onnx") from None
    graph = _Graph(model.detector).eval()
    crop = model.config.protocol.crop or model.detector.backbone.preprocess.size
    example = torch.zeros(2, 3, crop, crop)
    outputs = ["logit", "patch_map"] if graph.with_map else ["logit"]

    def write(tmp: str) -> None:
        import warnings

        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about shape checks: the shapes are fixed per protocol
            torch.onnx.export(
                graph,
                (example,),
                tmp,
                input_names=["pixels"],
                output_names=outputs,
                dynamic_axes={name: {0: "batch"} for name in ["pixels", *outputs]},
                opset_version=opset,
                dynamo=False,
            )
        _stamp(tmp, model)

    return atomic_write(out, write)


ID_KEY = "aigi_model_id"


def _stamp(path: str, model: Model) -> None:
    """Record which weights the graph holds (``aigi_model_id`` in the ONNX metadata), so a stale file is refused."""
    import onnx

    from aigi.engine.robustness import model_id

    graph = onnx.load(path)
    graph.metadata_props.add(key=ID_KEY, value=model_id(model))
    onnx.save(graph, path)


class OnnxDetector(torch.nn.Module):
    """Stands in for a model's detector: the same interface (``__call__`` -> :class:`Output`, the backbone's
    preprocessing, the patch grid), the forward pass run by onnxruntime."""

    cacheable = False

    def __init__(self, path: str | os.PathLike, original: torch.nn.Module, threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.path = Path(path)
        self.model_id = self.session.get_modelmeta().custom_metadata_map.get(ID_KEY)
        self.backbone = original.backbone
        self.trainable_state_dict = original.trainable_state_dict  # the model's id is the PyTorch weights' id
        self.patch_map_label = original.patch_map_label
        self.patch_grid = original.patch_grid

    def forward(self, pixels: torch.Tensor) -> Output:
        outs = self.session.run(None, {"pixels": pixels.detach().cpu().numpy().astype(np.float32, copy=False)})
        patch_map = torch.from_numpy(outs[1]) if len(outs) > 1 else None
        return Output(logit=torch.from_numpy(outs[0]), patch_map=patch_map)


def cached_export(model: Model) -> Path:
    """The model's ONNX file in the cache: exported on first use, reused after, exported again when the file there
    is not this model's (e.g. an unstamped file from an older aigi)."""
    from aigi.engine.robustness import model_id

    path = onnx_cache_dir() / f"{model_id(model)}.onnx"
    return path if path.is_file() and stamp_of(path) == model_id(model) else export(model, path)


def onnx_cache_dir() -> Path:
    """Where exported graphs are kept: ``$AIGI_ONNX_DIR``, else ``onnx/`` in the feature cache (``$AIGI_CACHE_DIR``)."""
    from aigi.engine.features import default_cache_dir

    return Path(os.environ.get("AIGI_ONNX_DIR") or default_cache_dir() / "onnx")


def stamp_of(path: Path) -> str | None:
    """The model id an exported file was stamped with (None: none, or not a readable ONNX file)."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - a damaged cache file is simply exported again
        return None
    return next((p.value for p in graph.metadata_props if p.key == ID_KEY), None)


def with_onnx_runtime(model: Model, folder: str | os.PathLike | None = None, threads: int | None = None) -> Model:
    """The same model scored through onnxruntime: the folder's ``model.onnx`` if it has one, else the cached export."""
    if not _onnxruntime_installed():
        raise ConfigError("--runtime onnx needs onnxruntime: pip install onnxruntime")
    if model.config.detector == STACK:
        raise ConfigError("--runtime onnx scores single models, not a stack (its members run in PyTorch)")
    from aigi.engine.robustness import model_id

    own = Path(folder) / "model.onnx" if folder is not None else None
    path = own if own is not None and own.is_file() else cached_export(model)
    detector = OnnxDetector(path, model.detector, threads)
    if detector.model_id != model_id(model):
        raise ConfigError(
            f"{path} was not exported from this model's weights and settings (retrained or recalibrated since?): "
            f"export it again with aigi export onnx, or delete it"
        )
    return Model(detector, model.config)


RUNTIMES = ("auto", "torch", "onnx")


def with_runtime(model: Model, folder: str | os.PathLike | None, runtime: str = "auto") -> Model:
    """``model`` (loaded from ``folder``) in the runtime asked for: ``torch``, ``onnx`` (:func:`with_onnx_runtime`), or
    ``auto``: onnxruntime when the folder has a ``model.onnx`` exported from these weights, or for the shipped model
    (its graph is exported into the cache on first use, a few seconds once); else PyTorch (a ``model.onnx`` from
    other weights is named on stderr and left alone)."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
    if runtime == "torch":
        return model
    if runtime == "onnx":
        return with_onnx_runtime(model, folder)
    if model.config.detector == STACK or not _onnxruntime_installed():
        return model
    own = Path(folder) / "model.onnx" if folder is not None else None
    if own is not None and own.is_file():
        return _own_graph(model, folder, own)
    if folder is not None and Path(folder).resolve() == default_model_path().resolve():
        try:
            return with_onnx_runtime(model, None)
        except ConfigError:  # no onnx package to export with: PyTorch, the same verdicts
            return model
    return model


def _own_graph(model: Model, folder, own: Path) -> Model:
    """The folder's ``model.onnx`` when it holds these weights; else PyTorch, with a note."""
    from aigi.engine.robustness import model_id

    detector = OnnxDetector(own, model.detector)
    if detector.model_id != model_id(model):
        print(
            f"note: {own} was exported from other weights or settings, so this model runs in PyTorch "
            f"(aigi export onnx --model {folder} --out {own} brings it up to date)",
            file=sys.stderr,
        )
        return model
    return Model(detector, model.config)


def _onnxruntime_installed() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def runtime_of(model: Model) -> str:
    """Which runtime scores ``model``: ``onnx`` or ``torch``."""
    return "onnx" if isinstance(model.detector, OnnxDetector) else "torch"
