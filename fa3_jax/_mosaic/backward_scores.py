"""In-kernel recomputation of softmax probabilities and logit gradients.

Shared by the dK/dV and dQ kernels; works on register tiles of either
orientation because every per-element quantity arrives as a full 2-D tile
(positions from iotas, per-query lse/delta already broadcast by the caller).
The logit recipe itself (scale, softcap, ALiBi, positional masks) comes from
``fa3_jax._mosaic.common`` so forward and backward cannot disagree.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

from fa3_jax._mosaic.common import LOG2E, alibi_base2, logits_base2, positional_visible
from fa3_jax.masks import MaskSpec

__all__ = ["ScoreParams", "probs_and_dlogits", "prepare_lse"]


@dataclasses.dataclass(frozen=True)
class ScoreParams:
    """Static recipe from q.k to probabilities (must match the forward's).

    Attributes:
      spec: positional masks and true sequence lengths.
      softmax_scale: multiplies q.k first.
      softcap: if set, logits become ``softcap * tanh(logits / softcap)``.
      has_alibi: add ``-slope * |i + offset - j|``.
      has_segments: mask keys whose segment id differs from the query's.
    """

    spec: MaskSpec
    softmax_scale: float
    softcap: float | None
    has_alibi: bool
    has_segments: bool


def probs_and_dlogits(
    params: ScoreParams,
    qk,
    dp,
    lse2,
    delta,
    q_pos,
    k_pos,
    *,
    slope=None,
    alibi2=None,
    segments=None,
    partial=None,
    branch: bool = False,
):
    """Recomputes ``p`` and the gradient w.r.t. the scaled logits ``scale * q.k``.

    Args:
      qk: f32 tile of raw ``q . k`` products.
      dp: f32 tile of ``dO . v``, or a function returning it: called once ``p``
        is computed, so a caller can let the dP wgmma finish under the exp2s.
      lse2: f32 tile, the row's ``lse * log2(e)`` (``+inf`` for rows that see no key).
      delta: f32 tile, the row's ``rowsum(dO * O) - dlse``.
      q_pos, k_pos: int32 tiles of absolute positions.
      slope: f32 scalar ALiBi slope (when ``params.has_alibi``).
      alibi2: f32 tile, ALiBi's key term when it splits (``common.alibi_splits``; the
        caller folded the query term into ``lse2``), replacing the ALiBi from positions.
      segments: (when ``params.has_segments``) a function returning the int32 tiles
        ``(q_seg, k_seg)``, called only where element masks apply, so the ids' shared
        memory loads stay inside the partial-tile branch.
      partial: int32 scalar, element masks apply only when nonzero; ``True``: the
        tile is known to be partial (masks applied, no test); None compiles them
        out (the tile is known to be full).
      branch: compute the element masks behind a branch taken only for partial
        tiles (as the forward does); False selects on every tile, branch-free.

    Returns:
      ``(p, ds)``: f32 tiles; ``ds`` still lacks the factor ``softmax_scale``.
    """
    capped2 = logits_base2(qk, softmax_scale=params.softmax_scale, softcap=params.softcap)
    s2 = capped2
    if alibi2 is not None:
        s2 = s2 + alibi2
    elif params.has_alibi:
        s2 = s2 + alibi_base2(q_pos, k_pos, slope, spec=params.spec)
    p = jnp.exp2(s2 - lse2)
    if partial is not None:

        def visible():
            keep = positional_visible(q_pos, k_pos, spec=params.spec)
            if not params.has_segments:
                return keep
            q_seg, k_seg = segments()
            return keep & (q_seg == k_seg)

        if partial is True:
            p = jnp.where(visible(), p, 0.0)
        elif branch:
            p = lax.cond(partial != 0, lambda p: jnp.where(visible(), p, 0.0), lambda p: p, p)
        else:
            p = jnp.where(visible() | (partial == 0), p, 0.0)
    ds = p * ((dp() if callable(dp) else dp) - delta)
    if params.softcap is not None:
        # d softcap(x)/dx = 1 - tanh^2; tanh is the base-2 logit over softcap*log2(e).
        t = capped2 * (1.0 / (params.softcap * LOG2E))
        ds = ds * (1.0 - t * t)
    return p, ds


def prepare_lse(lse_BHS: jax.Array) -> jax.Array:
    """``lse * log2(e)`` with fully masked rows (``-inf``) mapped to ``+inf``.

    ``exp2(s - (+inf)) = 0`` then gives those rows zero probabilities and
    gradients instead of NaN.
    """
    lse_BHS = lse_BHS.astype(jnp.float32)
    return jnp.where(jnp.isneginf(lse_BHS), jnp.inf, lse_BHS * LOG2E)
