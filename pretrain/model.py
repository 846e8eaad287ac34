"""Decoder-only language model (SlimPajama-DC / BTLM): tied embeddings, pre-LayerNorm blocks,
causal ALiBi attention over packed documents, SwiGLU MLP, no positional embedding.

Parameters are fp32 (the optimiser's master copy); matmuls run in `ModelConfig.dtype`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

import fa3_jax
from pretrain.attention import causal_alibi_attention
from pretrain.config import ModelConfig

__all__ = ["LM", "REMAT_POLICIES", "tied_logits"]

REMAT_POLICIES = {
    "full": None,  # save nothing inside a block; recompute it in the backward pass
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep matmul outputs
    # matmul outputs and attention's out/lse: the backward does not re-run the attention forward
    "dots_attention": fa3_jax.remat_policy(),
}


@jax.custom_vjp
def tied_logits(x_BSD: jax.Array, embedding_VD: jax.Array) -> jax.Array:
    """`x · Eᵀ` -> float32 [batch, seq, vocab] logits from [batch, seq, d] and [vocab, d] inputs of
    one dtype. The forward accumulates and returns fp32 (the softmax needs it); the backward casts
    the fp32 logit gradient to the inputs' dtype first, so both of its matmuls run on bf16 tensor
    cores with fp32 accumulation instead of in fp32 (TF32), which a profile of the 1.3b step
    showed costing ~6% of the step."""
    return jnp.einsum("bsd,vd->bsv", x_BSD, embedding_VD, preferred_element_type=jnp.float32)


def _tied_logits_fwd(x_BSD, embedding_VD):
    return tied_logits(x_BSD, embedding_VD), (x_BSD, embedding_VD)


def _tied_logits_bwd(residuals, dlogits_BSV):
    x_BSD, embedding_VD = residuals
    dlogits_BSV = dlogits_BSV.astype(x_BSD.dtype)
    dx_BSD = jnp.einsum(
        "bsv,vd->bsd", dlogits_BSV, embedding_VD, preferred_element_type=jnp.float32
    )
    demb_VD = jnp.einsum("bsv,bsd->vd", dlogits_BSV, x_BSD, preferred_element_type=jnp.float32)
    return dx_BSD.astype(x_BSD.dtype), demb_VD.astype(embedding_VD.dtype)


tied_logits.defvjp(_tied_logits_fwd, _tied_logits_bwd)


def _dense(cfg: ModelConfig, d_in: int, d_out: int, std: float, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(
        d_in,
        d_out,
        use_bias=cfg.use_bias,
        dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.float32,
        kernel_init=nnx.initializers.normal(std),
        rngs=rngs,
    )


def _residual_std(cfg: ModelConfig) -> float:
    """GPT-2: projections that write into the residual stream shrink with depth."""
    return cfg.init_std / math.sqrt(2 * cfg.n_layers)


def _norm(cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(
        cfg.d_model,
        epsilon=cfg.norm_eps,
        dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.float32,
        rngs=rngs,
    )


class Attention(nnx.Module):
    """Fused QKV projection, causal ALiBi attention within documents, output projection."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.qkv = _dense(cfg, cfg.d_model, 3 * cfg.d_model, cfg.init_std, rngs)
        self.out = _dense(cfg, cfg.d_model, cfg.d_model, _residual_std(cfg), rngs)

    def __call__(self, x_BSD: jax.Array, segment_ids_BS: jax.Array | None) -> jax.Array:
        cfg = self.cfg
        batch, seq, _ = x_BSD.shape
        qkv_BS3HK = self.qkv(x_BSD).reshape(batch, seq, 3, cfg.n_heads, cfg.head_dim)
        q_BSHK, k_BSHK, v_BSHK = (qkv_BS3HK[:, :, i] for i in range(3))
        out_BSHK = causal_alibi_attention(
            q_BSHK,
            k_BSHK,
            v_BSHK,
            segment_ids_BS=segment_ids_BS,
            slopes_H=jnp.asarray(fa3_jax.alibi_slopes(cfg.n_heads)),
            softmax_scale=cfg.softmax_scale,
            implementation=cfg.attention,
        )
        return self.out(out_BSHK.reshape(batch, seq, cfg.d_model))


class SwiGLU(nnx.Module):
    """`down(silu(gate(x)) * up(x))`; gate and up share one fused projection."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.d_ff = cfg.d_ff
        self.gate_up = _dense(cfg, cfg.d_model, 2 * cfg.d_ff, cfg.init_std, rngs)
        self.down = _dense(cfg, cfg.d_ff, cfg.d_model, _residual_std(cfg), rngs)

    def __call__(self, x_BSD: jax.Array) -> jax.Array:
        gate_BSF, up_BSF = jnp.split(self.gate_up(x_BSD), [self.d_ff], axis=-1)
        return self.down(jax.nn.silu(gate_BSF) * up_BSF)


class Block(nnx.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.ln_attn = _norm(cfg, rngs)
        self.attn = Attention(cfg, rngs)
        self.ln_mlp = _norm(cfg, rngs)
        self.mlp = SwiGLU(cfg, rngs)

    def __call__(self, x_BSD: jax.Array, segment_ids_BS: jax.Array | None) -> jax.Array:
        x_BSD = x_BSD + self.attn(self.ln_attn(x_BSD), segment_ids_BS)
        return x_BSD + self.mlp(self.ln_mlp(x_BSD))


def _apply_block(block: Block, x_BSD: jax.Array, segment_ids_BS: jax.Array | None) -> jax.Array:
    return block(x_BSD, segment_ids_BS)


class LM(nnx.Module):
    """The language model. `LM(cfg, rngs=nnx.Rngs(seed))(tokens, segment_ids)` -> fp32 logits."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = nnx.Embed(
            cfg.padded_vocab_size,
            cfg.d_model,
            dtype=jnp.dtype(cfg.dtype),
            param_dtype=jnp.float32,
            embedding_init=nnx.initializers.normal(cfg.init_std),
            rngs=rngs,
        )
        self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.n_layers)])
        self.ln_final = _norm(cfg, rngs)

    def embed_tokens(self, tokens_BS: jax.Array) -> jax.Array:
        """int32 [batch, seq] ids -> [batch, seq, d_model] scaled embeddings (compute dtype)."""
        if tokens_BS.ndim != 2:
            raise ValueError(f"tokens must be [batch, seq], got shape {tokens_BS.shape}")
        scale = jnp.asarray(self.cfg.embedding_multiplier, jnp.dtype(self.cfg.dtype))
        return self.embed(tokens_BS) * scale

    def logits_from_embeddings(
        self,
        x_BSD: jax.Array,
        segment_ids_BS: jax.Array | None = None,
        *,
        activation_sharding: jax.sharding.Sharding | None = None,
    ) -> jax.Array:
        """Runs the blocks and the tied output layer on [batch, seq, d_model] embeddings."""
        cfg = self.cfg
        if segment_ids_BS is not None and segment_ids_BS.shape != x_BSD.shape[:2]:
            raise ValueError(
                f"segment_ids shape {segment_ids_BS.shape} must be [batch, seq] = {x_BSD.shape[:2]}"
            )
        apply = _apply_block
        if cfg.remat != "none":
            apply = nnx.remat(_apply_block, policy=REMAT_POLICIES[cfg.remat])
        for block in self.blocks:
            if activation_sharding is not None:
                x_BSD = jax.lax.with_sharding_constraint(x_BSD, activation_sharding)
            x_BSD = apply(block, x_BSD, segment_ids_BS)
        dtype = jnp.dtype(cfg.dtype)
        # tied output layer; fp32 accumulation and fp32 logits for the softmax
        logits_BSV = tied_logits(
            self.ln_final(x_BSD).astype(dtype), self.embed.embedding[...].astype(dtype)
        )
        logits_BSV = logits_BSV * cfg.output_multiplier
        in_vocab_V = jnp.arange(cfg.padded_vocab_size) < cfg.vocab_size
        return jnp.where(in_vocab_V, logits_BSV, -jnp.inf)

    def __call__(
        self,
        tokens_BS: jax.Array,
        segment_ids_BS: jax.Array | None = None,
        *,
        activation_sharding: jax.sharding.Sharding | None = None,
    ) -> jax.Array:
        """Next-token logits.

        Args:
          tokens_BS: int32 [batch, seq] token ids.
          segment_ids_BS: int32 [batch, seq] packed-document ids (tokens attend only within their
            document); None = one document per row.
          activation_sharding: if given, the [batch, seq, d_model] residual stream is constrained
            to it between blocks (batch split over the mesh, so FSDP gathers weights instead).
        Returns:
          float32 [batch, seq, padded_vocab_size]; padded vocabulary rows are -inf.
        """
        x_BSD = self.embed_tokens(tokens_BS)
        return self.logits_from_embeddings(
            x_BSD, segment_ids_BS, activation_sharding=activation_sharding
        )
