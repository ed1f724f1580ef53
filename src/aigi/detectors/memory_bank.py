"""MIRROR's reality memory: patch tokens read back from K learned prototypes by sparse top-k attention.

Formulas (paper defaults in brackets): a memory ``M`` [K=4096, D] initialised orthogonal; ``q = tokens Wq``,
``k = M Wk``, ``v = M Wv`` (bias-free, D -> D) split into ``heads`` [8]; per head and token the logits
``q k^T * (D/heads)^-0.5`` keep only their ``top_k`` [128] largest entries, softmax (fp32) over those, the
weights read ``v``, heads are merged and ``out_proj`` (with bias) gives the reconstruction.

Two implementations of the same formulas:

- :meth:`MemoryBank.forward` (fast): ``k``/``v`` are computed once and reused while the memory cannot change
  (frozen, or no gradient wanted); logits are built per head and row chunk in one batched matmul; the top-k
  entries are exactly those the reference's ``topk`` keeps (see :func:`topk_select`); the softmax runs over the
  kept ``top_k`` entries only and the read-out is a weighted gather (``embedding_bag``), so no dense
  ``[B, heads, N, K]`` softmax or attention matrix is ever made.
- :meth:`MemoryBank.plain_forward`: what the reference code does (projections recomputed per call, a dense
  ``-inf``-masked softmax and a dense attention @ values). Kept for tests and the speed benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from aigi.detectors.derived import DerivedCache
from aigi.errors import ConfigError

ENTROPY_EPS = 1e-9  # inside the log of the attention entropy, as in the paper's code


@dataclass
class Recall:
    """What reading the memory returns: the reconstruction and the kept attention entries."""

    recon: torch.Tensor  # [B, N, D]
    weights: torch.Tensor  # [B, heads, N, top_k] softmax weights (fp32)
    index: torch.Tensor  # [B, heads, N, top_k] slot index of each weight

    def perplexity(self) -> torch.Tensor:
        """[B, 2]: mean over heads and tokens of the largest attention weight, and of the attention entropy."""
        w = self.weights
        max_w = w.amax(-1).mean((1, 2))
        entropy = -(w * torch.log(w + ENTROPY_EPS)).sum(-1).mean((1, 2))
        return torch.stack([max_w, entropy], -1)

    def dense(self, slots: int) -> torch.Tensor:
        """The attention as a dense [B, heads, N, slots] matrix (zeros off the top-k), for inspection."""
        out = self.weights.new_zeros(*self.weights.shape[:-1], slots)
        return out.scatter_(-1, self.index, self.weights)


def dense_perplexity(attn: torch.Tensor) -> torch.Tensor:
    """Perplexity evidence from a dense attention matrix [B, heads, N, K] (the reference's formulation)."""
    attn = attn.float()
    max_w = attn.amax(-1).mean((1, 2))
    entropy = -(attn * torch.log(attn + ENTROPY_EPS)).sum(-1).mean((1, 2))
    return torch.stack([max_w, entropy], -1)


def topk_select(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest entries along the last dim (unordered), exactly the entries the reference's
    ``logits.topk(k)`` keeps.

    An unsorted top-(k+1) is cheaper than a sorted top-k; its smallest value tells where the k-th and (k+1)-th
    logits tie, and only there (rare: the choice between equal logits is arbitrary) the row is re-selected with
    the reference's own sorted ``topk``. (A block-pruned selection was also measured: no faster on this CPU.)"""
    n = logits.shape[-1]
    if k >= n:
        return torch.arange(n, device=logits.device).expand(*logits.shape[:-1], n)
    vals, idx = logits.topk(k + 1, -1, sorted=False)
    low = vals.topk(2, -1, largest=False)  # the (k+1)-th and the k-th largest
    keep = torch.arange(k + 1, device=logits.device) != low.indices[..., :1]  # everything but the (k+1)-th
    out = idx[keep].view(*logits.shape[:-1], k)
    tie = low.values[..., 0] == low.values[..., 1]
    if tie.any():
        out[tie] = logits[tie].topk(k, -1).indices
    return out


class MemoryBank(nn.Module):
    def __init__(self, dim: int, slots: int = 4096, heads: int = 8, top_k: int = 128, chunk_rows: int = 4096) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"memory bank: dim {dim} is not divisible by heads {heads}")
        if not 1 <= top_k <= slots:
            raise ConfigError(f"memory bank: top_k must be in [1, slots={slots}], got {top_k}")
        self.dim, self.slots, self.heads, self.top_k = dim, slots, heads, top_k
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.chunk_rows = chunk_rows
        self.memory = nn.Parameter(torch.empty(slots, dim))
        nn.init.orthogonal_(self.memory)
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.out_proj = nn.Linear(dim, dim)
        self._kv_cache = DerivedCache()

    # -- keys and values of the memory ------------------------------------------------------------------
    def _kv_sources(self) -> tuple[torch.Tensor, ...]:
        return (self.memory, self.k_proj.weight, self.v_proj.weight)

    def keys_values(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(k^T [heads, head_dim, K], v [heads, K, head_dim])``; computed once while they cannot change (see
        :mod:`aigi.detectors.derived`: replacing a projection, ``load_state_dict``, in-place edits, optimizer steps
        and ``.to()`` all refresh them)."""
        return self._kv_cache.get(self._kv_sources(), self._project_kv)

    def clear_cache(self) -> None:
        """Forget the cached keys/values: needed only after editing weights through ``.data`` (which, unlike
        in-place edits, ``load_state_dict`` and optimizer steps, leaves no trace in the version counters)."""
        self._kv_cache.clear()

    def _project_kv(self) -> tuple[torch.Tensor, torch.Tensor]:
        h, dh, k = self.heads, self.head_dim, self.slots
        keys = self.k_proj(self.memory).view(k, h, dh).permute(1, 2, 0).contiguous()
        values = self.v_proj(self.memory).view(k, h, dh).transpose(0, 1).contiguous()
        return keys, values

    def _apply(self, fn, recurse: bool = True):  # .to() / .half() / .cuda() drop the cache
        self._kv_cache.clear()
        return super()._apply(fn, recurse)

    # -- reading the memory ---------------------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor) -> Recall:
        b, n, d = tokens.shape
        if d != self.dim:
            raise ValueError(f"memory bank expects tokens of dim {self.dim}, got {d}")
        h, dh, kk = self.heads, self.head_dim, self.top_k
        keys, values = self.keys_values()
        q = self.q_proj(tokens).reshape(b * n, h, dh).transpose(0, 1)  # [h, BN, dh]
        keys, values = keys.to(q.dtype), values.to(q.dtype)  # no-ops unless under autocast
        rows = b * n
        step = max(1, self.chunk_rows)
        ws, idxs, outs = [], [], []
        for s in range(0, rows, step):
            qc = q[:, s : s + step]
            logits = torch.bmm(qc, keys).mul_(self.scale)  # [h, c, K]; scaled after the product, as the formula reads
            with torch.no_grad():
                idx = topk_select(logits.detach(), kk)
            w = torch.softmax(logits.gather(-1, idx).float(), -1)  # [h, c, k] fp32
            ws.append(w)
            idxs.append(idx)
            outs.append(self._read(values, idx, w.to(values.dtype)).transpose(0, 1).reshape(-1, d))
        recon = self.out_proj(torch.cat(outs, 0).view(b, n, d))
        weights = torch.cat(ws, 1).view(h, b, n, kk).transpose(0, 1)
        index = torch.cat(idxs, 1).view(h, b, n, kk).transpose(0, 1)
        return Recall(recon=recon, weights=weights, index=index)

    @staticmethod
    def _read(values: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``sum_j w[.., j] * values[h, idx[.., j]]`` -> [h, c, dh].

        A weighted gather (``embedding_bag``) when no gradient must reach the values (inference, Phase 2's frozen
        memory); when one must (Phase 1), the weights are scattered into a dense row and multiplied, because the
        gather's gradient for its table sorts every index and is several times slower."""
        h, c, kk = idx.shape
        if torch.is_grad_enabled() and values.requires_grad:
            dense = w.new_zeros(h, c, values.shape[1]).scatter_(-1, idx, w)
            return torch.bmm(dense, values)
        offsets = torch.arange(0, c * kk, kk, device=idx.device)
        return torch.stack(
            [
                F.embedding_bag(idx[i].reshape(-1), values[i], offsets, mode="sum", per_sample_weights=w[i].reshape(-1))
                for i in range(h)
            ]
        )

    def plain_forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference formulation: ``(recon [B, N, D], dense attention [B, heads, N, K])``."""
        b, n, d = tokens.shape
        h, dh = self.heads, self.head_dim
        q = self.q_proj(tokens).view(b, n, h, dh).transpose(1, 2)
        k = self.k_proj(self.memory).unsqueeze(0).expand(b, -1, -1).reshape(b, self.slots, h, dh).transpose(1, 2)
        v = self.v_proj(self.memory).unsqueeze(0).expand(b, -1, -1).reshape(b, self.slots, h, dh).transpose(1, 2)
        logits = torch.matmul(q, k.transpose(-2, -1)) * self.scale  # [B, h, N, K]
        top_v, top_i = logits.topk(self.top_k, -1)
        masked = torch.full_like(logits, float("-inf")).scatter(-1, top_i, top_v)
        attn = torch.softmax(masked.float(), -1).to(q.dtype)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, n, d)
        return self.out_proj(out), attn

    # -- training ---------------------------------------------------------------------------------------------
    def orthogonality(self) -> torch.Tensor:
        """``|| norm(M) norm(M)^T - I ||_F`` with L2-normalised rows (not squared)."""
        m = F.normalize(self.memory.float(), dim=-1)
        gram = m @ m.T
        return torch.linalg.matrix_norm(gram - torch.eye(self.slots, device=gram.device), ord="fro")

    def config(self) -> dict:
        return {"dim": self.dim, "slots": self.slots, "heads": self.heads, "top_k": self.top_k}

    def metadata(self, prefix: str = "") -> dict[str, str]:
        """The settings as safetensors header entries (heads and top-k change no tensor shape)."""
        return {f"{prefix}{k}": str(v) for k, v in self.config().items()}
