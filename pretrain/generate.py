"""`python -m pretrain.generate --checkpoint RUN_DIR[/checkpoints/STEP] --prompt TEXT`: sample text.

Loads the run's config.json, the checkpoint's parameters (latest step unless a step directory is
given) and the tokenizer of the run's prepared data, then samples with temperature and nucleus
(top-p) sampling. Temperature 0 is greedy decoding. Generation stops at EOS or after
--max_new_tokens. (No KV cache: every token re-runs the prompt, fine for the small models.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from data.tokenizer import eos_id, load_tokenizer
from pretrain.checkpoint import Checkpointer
from pretrain.config import RunConfig
from pretrain.sharding import make_mesh
from pretrain.train import build_state

__all__ = ["load_model", "sample_next", "generate"]


def load_model(checkpoint: str | Path):
    """(model, RunConfig) from a run directory (latest checkpoint) or RUN_DIR/checkpoints/STEP."""
    path = Path(checkpoint)
    step = None
    if path.parent.name == "checkpoints" and path.name.isdigit():
        run_dir, step = path.parent.parent, int(path.name)
    else:
        run_dir = path
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir / 'config.json'} does not exist (not a training run)")
    cfg = RunConfig.load(run_dir / "config.json")
    ckpt = Checkpointer(run_dir / "checkpoints", use_async=False)
    step = ckpt.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {run_dir / 'checkpoints'}")
    built = build_state(cfg, make_mesh(devices=jax.devices()[:1]))
    state = ckpt.restore(step, built.abstract_state)
    ckpt.close()
    return nnx.merge(built.graphdef, state.params), cfg


def sample_next(logits_V: jax.Array, key: jax.Array, temperature: float, top_p: float) -> jax.Array:
    """One token id from float32 [vocab] logits: greedy at temperature 0, else top-p sampling."""
    if temperature == 0:
        return jnp.argmax(logits_V)
    probs_V = jax.nn.softmax(logits_V / temperature)
    order_V = jnp.argsort(-probs_V)
    sorted_V = probs_V[order_V]
    # keep the smallest prefix whose mass reaches top_p (always at least the top token)
    keep_V = jnp.cumsum(sorted_V) - sorted_V < top_p
    choice = jax.random.categorical(key, jnp.where(keep_V, jnp.log(sorted_V), -jnp.inf))
    return order_V[choice]


def generate(
    model,
    prompt_ids: list[int],
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    eos_id: int | None,
    seed: int = 0,
) -> list[int]:
    """Continues `prompt_ids`; returns the new token ids."""
    if not prompt_ids:
        raise ValueError("prompt must encode to at least one token")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    length = len(prompt_ids) + max_new_tokens
    tokens_1T = np.zeros((1, length), np.int32)
    tokens_1T[0, : len(prompt_ids)] = prompt_ids

    @jax.jit
    def step(tokens_1T, position, key):
        logits_TV = model(tokens_1T)[0]  # causal: tokens after `position` do not matter
        return sample_next(logits_TV[position], key, temperature, top_p)

    key, new = jax.random.key(seed), []
    for position in range(len(prompt_ids) - 1, length - 1):
        key, sub = jax.random.split(key)
        token = int(step(jnp.asarray(tokens_1T), position, sub))
        if eos_id is not None and token == eos_id:
            break
        tokens_1T[0, position + 1] = token
        new.append(token)
    return new


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pretrain.generate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, help="RUN_DIR or RUN_DIR/checkpoints/STEP")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--max_new_tokens", type=int, default=100)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top_p", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer.json (default: the one in the run's prepared data_dir)",
    )
    args = parser.parse_args(argv)
    model, cfg = load_model(args.checkpoint)
    tok_path = args.tokenizer or Path(cfg.train.data_dir) / "tokenizer.json"
    tokenizer = load_tokenizer(tok_path)
    new = generate(
        model,
        tokenizer.encode(args.prompt).ids,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        eos_id=eos_id(tokenizer),
        seed=args.seed,
    )
    print(args.prompt + tokenizer.decode(new))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
