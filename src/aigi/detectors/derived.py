"""Tensors derived from a module's weights, computed once while their sources cannot have changed.

Used where scoring would otherwise recompute the same thing for every batch: MIRROR's memory keys and values,
MDMF's projection of the reference bank. The entry is keyed on the source tensors themselves (identity, so a
replaced parameter refreshes it), their storage and their version counters (in-place edits, optimizer steps,
``load_state_dict`` and ``.to()`` all refresh it). An edit through ``param.data`` leaves no trace in any of
those: call :meth:`DerivedCache.clear` after one.

Nothing is cached when gradients must reach a source (training), or when a source is an inference tensor (made
under ``torch.inference_mode``, which has no version counter to key on): then the value is computed per call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


class DerivedCache:
    def __init__(self) -> None:
        self._entry: tuple | None = None

    def get(self, sources: Sequence[torch.Tensor], compute: Callable[[], object]):
        if torch.is_grad_enabled() and any(s.requires_grad for s in sources):
            return compute()
        if any(s.is_inference() for s in sources):
            return compute()
        versions = tuple((s._version, s.data_ptr()) for s in sources)
        entry = self._entry
        if (
            entry is None
            or entry[1] != versions
            or len(entry[0]) != len(sources)
            or any(a is not b for a, b in zip(entry[0], sources))
        ):
            # Made outside inference mode (an entry filled while scoring can serve a training forward) and outside
            # autocast (it keeps the weights' dtype; callers cast to their inputs' dtype).
            device = sources[0].device.type
            with torch.inference_mode(False), torch.no_grad(), torch.autocast(device, enabled=False):
                self._entry = entry = (tuple(sources), versions, compute())
        return entry[2]

    def clear(self) -> None:
        self._entry = None

    @property
    def empty(self) -> bool:
        return self._entry is None
