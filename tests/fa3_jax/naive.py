"""An independent, naive attention written for the tests (NumPy float64 or jax.numpy).

It shares no code with ``fa3_jax``: masks are written out element by element
from the conventions in the ``fa3_jax.attention`` docstring.
"""

from __future__ import annotations

import numpy as np


def naive_attention(
    q,
    k,
    v,
    *,
    xp=np,
    causal=False,
    scale=None,
    window=(None, None),
    softcap=None,
    alibi=None,
    q_seg=None,
    kv_seg=None,
    block=None,
    round_p=None,
):
    """Returns ``(out [B, Sq, Hq, Dv], lse [B, Hq, Sq])`` computed in q's dtype.

    ``block`` is ``(mask [B or 1, H or 1, nq, nk] bool, block_q, block_k)``;
    ``alibi`` is ``[H]`` or ``[B, H]``; ``round_p``, if given, rounds the unnormalized
    probabilities ``exp(s - row max)`` before they multiply V (an FP8 P·V), not in the sum.
    """
    batch, seq_q, heads_q, head_dim = q.shape
    seq_k, heads_kv = k.shape[1], k.shape[2]
    group = heads_q // heads_kv
    scale = 1.0 / np.sqrt(head_dim) if scale is None else scale
    k = xp.repeat(k, group, axis=2)
    v = xp.repeat(v, group, axis=2)
    s = xp.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if softcap is not None:
        s = softcap * xp.tanh(s / softcap)
    i = np.arange(seq_q)[:, None]
    j = np.arange(seq_k)[None, :]
    diag = i + (seq_k - seq_q)
    if alibi is not None:
        slopes = alibi if alibi.ndim == 2 else alibi[None]
        s = s - slopes[:, :, None, None] * np.abs(diag - j).astype(s.dtype)
    mask = np.ones((seq_q, seq_k), bool)
    if causal:
        mask &= j <= diag
    if window[0] is not None:
        mask &= j >= diag - window[0]
    if window[1] is not None:
        mask &= j <= diag + window[1]
    mask = mask[None, None]
    if q_seg is not None:
        mask = mask & (np.asarray(q_seg)[:, None, :, None] == np.asarray(kv_seg)[:, None, None, :])
    if block is not None:
        bm, bq, bk = block
        mask = mask & np.asarray(bm)[:, :, i // bq, j // bk]
    s = xp.where(mask, s, -np.inf)
    row_max = xp.max(s, axis=-1, keepdims=True)
    row_max = xp.where(xp.isfinite(row_max), row_max, 0)
    p = xp.exp(s - row_max)
    denom = xp.sum(p, axis=-1, keepdims=True)
    safe = xp.where(denom > 0, denom, 1)
    if round_p is not None:
        p = round_p(p)
    out = xp.einsum("bhqk,bkhd->bqhd", p / safe, v)
    lse = xp.where(denom > 0, xp.log(safe) + row_max, -np.inf)[..., 0]
    return out, lse
