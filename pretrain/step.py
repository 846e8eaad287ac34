"""Pure, jit-able training and evaluation steps.

`TrainState` holds the fp32 parameters (a plain nested dict), the optimiser state and the step.
`make_train_step` returns `train_step(state, batch) -> (state, metrics)`, to be jitted with the
state donated; gradients are accumulated over `microbatches` with a `lax.scan`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import data

__all__ = ["TrainState", "loss_terms", "make_train_step", "make_eval_step", "NUM_SOURCES"]

NUM_SOURCES = len(data.SOURCES)  # the seven SlimPajama sources, in data's fixed order


class TrainState(NamedTuple):
    step: jax.Array  # int32 scalar: optimiser steps taken
    params: dict  # fp32 parameters, nested dict (nnx pure dict of the LM)
    opt_state: optax.OptState


def loss_terms(graphdef, params, batch, activation_sharding=None):
    """Summed next-token loss of one batch and its per-source breakdown.

    Args:
      batch: dict of int32 [batch, seq] arrays: tokens, targets (-1 = no loss), source_ids
        (index into data.SOURCES) and segment_ids (optional: without, one document per row).
    Returns:
      (loss_sum f32 [], token_count f32 [], per_source_sum f32 [7], per_source_count f32 [7]).
    """
    model = nnx.merge(graphdef, params)
    logits_BSV = model(
        batch["tokens"], batch.get("segment_ids"), activation_sharding=activation_sharding
    )
    targets_BS = batch["targets"]
    valid_BS = targets_BS >= 0
    nll_BS = optax.softmax_cross_entropy_with_integer_labels(
        logits_BSV, jnp.where(valid_BS, targets_BS, 0)
    )
    nll_BS = jnp.where(valid_BS, nll_BS, 0.0)
    weight_BS = valid_BS.astype(jnp.float32)
    # one-hot sums rather than a scatter: 7 bins would serialise GPU atomics
    onehot_BSN = jax.nn.one_hot(batch["source_ids"], NUM_SOURCES, dtype=jnp.float32)
    per_source_sum = (onehot_BSN * nll_BS[..., None]).sum((0, 1))
    per_source_count = (onehot_BSN * weight_BS[..., None]).sum((0, 1))
    return nll_BS.sum(), weight_BS.sum(), per_source_sum, per_source_count


def _split_microbatches(batch, microbatches: int, sharding):
    """[global, seq] -> [microbatches, global/microbatches, seq]; microbatch m takes rows m, m+M, …

    Interleaving keeps every microbatch spread over all devices of the batch-sharded input.
    """

    def split(x_GS):
        g, s = x_GS.shape
        x_MBS = x_GS.reshape(g // microbatches, microbatches, s).transpose(1, 0, 2)
        return x_MBS if sharding is None else jax.lax.with_sharding_constraint(x_MBS, sharding)

    return jax.tree.map(split, batch)


def make_train_step(
    graphdef,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    *,
    microbatches: int = 1,
    activation_sharding=None,
    microbatch_sharding=None,
) -> Callable:
    """Returns the pure `train_step(state, batch) -> (new_state, metrics)`.

    The loss is the mean over all valid target tokens of the global batch (accumulating
    summed gradients over microbatches and dividing once gives the same result as one big batch).
    metrics: loss, grad_norm (before clipping), lr, tokens, per_source_sum [7],
    per_source_count [7].
    """

    def grads_of(params, mb):
        def summed_loss(p):
            loss_sum, count, ps_sum, ps_count = loss_terms(graphdef, p, mb, activation_sharding)
            return loss_sum, (count, ps_sum, ps_count)

        return jax.value_and_grad(summed_loss, has_aux=True)(params)

    def train_step(state: TrainState, batch):
        if microbatches == 1:
            (loss_sum, (count, ps_sum, ps_count)), grads = grads_of(state.params, batch)
        else:
            mbs = _split_microbatches(batch, microbatches, microbatch_sharding)

            def body(carry, mb):
                (loss_sum, (count, ps_sum, ps_count)), grads = grads_of(state.params, mb)
                totals = (loss_sum, count, ps_sum, ps_count)
                return jax.tree.map(jnp.add, carry, (grads, totals)), None

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            init = (
                zeros,
                (jnp.zeros(()), jnp.zeros(()), jnp.zeros(NUM_SOURCES), jnp.zeros(NUM_SOURCES)),
            )
            (grads, (loss_sum, count, ps_sum, ps_count)), _ = jax.lax.scan(body, init, mbs)
        denom = jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss_sum / denom,
            "grad_norm": optax.tree.norm(grads),
            "lr": schedule(state.step),
            "tokens": count,
            "per_source_sum": ps_sum,
            "per_source_count": ps_count,
        }
        return TrainState(state.step + 1, params, opt_state), metrics

    return train_step


def make_eval_step(graphdef, activation_sharding=None) -> Callable:
    """Returns the pure `eval_step(params, batch) -> (per_source_sum [7], per_source_count [7])`."""

    def eval_step(params, batch):
        _, _, ps_sum, ps_count = loss_terms(graphdef, params, batch, activation_sharding)
        return ps_sum, ps_count

    return eval_step
