"""AdamW with decoupled weight decay (none on norms and biases), warm-up + cosine/linear decay,
global-norm clipping."""

from __future__ import annotations

import jax
import optax

from pretrain.config import TrainConfig

__all__ = ["make_schedule", "decay_mask", "make_optimizer"]


def make_schedule(tc: TrainConfig) -> optax.Schedule:
    """Linear warm-up 0 → lr over `warmup_steps`, then cosine or linear decay to lr·min_lr_ratio."""
    decay_steps = tc.steps - tc.warmup_steps
    end = tc.lr * tc.min_lr_ratio
    if tc.decay == "cosine":
        decay = optax.cosine_decay_schedule(tc.lr, decay_steps, alpha=tc.min_lr_ratio)
    else:
        decay = optax.linear_schedule(tc.lr, end, decay_steps)
    warmup = optax.linear_schedule(0.0, tc.lr, tc.warmup_steps)
    return optax.join_schedules([warmup, decay], [tc.warmup_steps])


def decay_mask(params):
    """True for matrices (decayed), False for vectors: LayerNorm scales/biases and biases."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(tc: TrainConfig) -> optax.GradientTransformation:
    adamw = optax.adamw(
        make_schedule(tc),
        b1=tc.beta1,
        b2=tc.beta2,
        eps=tc.adam_eps,
        weight_decay=tc.weight_decay,
        mask=decay_mask,
    )
    if tc.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(tc.grad_clip), adamw)
    return adamw
