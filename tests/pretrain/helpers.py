"""Small model and run configurations shared by the pretrain tests."""

from pretrain.config import make_config

SMALL_MODEL = {
    "n_layers": 2,
    "d_model": 32,
    "n_heads": 4,
    "d_ff": 64,
    "max_seq_len": 32,
    "vocab_size": 4096,
}


def small_config(run_dir, data_dir, **overrides):
    """A 1-layer, 32-wide model on 32-token sequences with 8 sequences a step."""
    values = {
        **SMALL_MODEL,
        "n_layers": 1,
        "attention": "reference",
        "global_batch": 8,
        "steps": 6,
        "warmup_steps": 1,
        "lr": 1e-2,
        "log_every": 1,
        "eval_every": 0,
        "checkpoint_every": 0,
        "progress": False,
        "run_dir": str(run_dir),
        "data_dir": str(data_dir),
    }
    values.update(overrides)
    return make_config("tiny", values)
