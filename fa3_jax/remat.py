"""Rematerialisation policy that keeps attention's residuals.

`fa3_jax.attention`'s forward pass names its two outputs that the backward pass needs
(`RESIDUAL_NAMES`: the output [batch, seq_q, heads, head_dim] and the fp32 log-sum-exp
[batch, heads, seq_q]). Under `jax.checkpoint` with a policy such as
`dots_with_no_batch_dims_saveable`, the attention kernel's outputs are not matmul outputs, so
the whole forward kernel runs again in the backward pass. `remat_policy` adds the two names to a
base policy, as MaxText does for its attention residuals: one more [batch, seq_q, heads] fp32
buffer per layer instead of a second forward kernel.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

from fa3_jax.api import RESIDUAL_NAMES

__all__ = ["remat_policy"]


def remat_policy(base: Callable | None = None) -> Callable:
    """`base` (default: `jax.checkpoint_policies.dots_with_no_batch_dims_saveable`) + attention's
    out and lse. Pass the result as `policy=` to `jax.checkpoint` / `nnx.remat`."""
    base = jax.checkpoint_policies.dots_with_no_batch_dims_saveable if base is None else base
    names = jax.checkpoint_policies.save_only_these_names(*RESIDUAL_NAMES)
    return jax.checkpoint_policies.save_from_both_policies(base, names)
