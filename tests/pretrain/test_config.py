import dataclasses

import jax
import pytest
from flax import nnx

from pretrain.config import (
    PRESETS,
    ModelConfig,
    RunConfig,
    TrainConfig,
    config_from_args,
    describe_keys,
    make_config,
    parse_overrides,
)
from pretrain.model import LM
from pretrain.sharding import make_mesh, param_shardings

# Parameter count each preset's name promises, as (low, high) bounds.
NAMED_SIZE = {
    "tiny": (1e6, 2e6),
    "125m": (115e6, 135e6),
    "350m": (330e6, 370e6),
    "1.3b": (1.25e9, 1.35e9),
    "7b": (6.5e9, 7.0e9),
}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_builds_abstractly_with_its_parameter_count(preset):
    cfg = make_config(preset).model
    model = nnx.eval_shape(lambda: LM(cfg, rngs=nnx.Rngs(0)))
    params = nnx.to_pure_dict(nnx.state(model))
    count = sum(x.size for x in jax.tree.leaves(params))
    assert count == cfg.num_params()
    low, high = NAMED_SIZE[preset]
    assert low <= count <= high
    # every parameter has a sharding rule
    shardings = param_shardings(params, make_mesh())
    assert len(jax.tree.leaves(shardings)) == len(jax.tree.leaves(params))


def test_1p3b_preset_is_the_slimpajama_dc_model():
    cfg = make_config("1.3b").model
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.max_seq_len) == (
        24,
        2048,
        16,
        5461,
        2048,
    )
    assert cfg.vocab_size == 50277 and cfg.padded_vocab_size == 50304


def test_overrides_are_parsed_by_field_type_and_saved(tmp_path):
    cfg = config_from_args(
        [
            "--preset=125m",
            "--lr=1e-3",
            "--n_layers=3",
            "--use_bias=true",
            "--attention=xla",
            "--run_dir=x",
        ]
    )
    assert (cfg.train.lr, cfg.model.n_layers, cfg.model.use_bias, cfg.model.attention) == (
        1e-3,
        3,
        True,
        "xla",
    )
    cfg.save(tmp_path / "config.json")
    assert RunConfig.load(tmp_path / "config.json") == cfg


@pytest.mark.parametrize(
    "args, match",
    [
        (["--learning_rate=1"], "unknown config key --learning_rate"),
        (["--n_layer=2"], "did you mean --n_layers"),
        (["lr=1"], "expected --key=value"),
        (["--lr"], "expected --key=value"),
        (["--lr=fast"], "--lr: expected a number"),
        (["--lr=nan"], "finite"),
        (["--n_layers=2.5"], "--n_layers: expected an int"),
        (["--use_bias=maybe"], "expected a boolean"),
        (["--attention=flash"], "expected one of"),
        (["--lr=1", "--lr=2"], "given twice"),
        (["--preset=2b"], "unknown preset"),
        (["--d_model=100", "--n_heads=3"], "divisible by n_heads"),
        (["--warmup_steps=500", "--steps=100"], "warmup_steps"),
        (["--global_batch=10", "--microbatches=3"], "divisible by microbatches"),
        (["--n_layers=0"], "n_layers must be a positive int"),
        (["--lr=-1"], "lr must be > 0"),
    ],
)
def test_bad_configuration_is_a_clear_error(args, match):
    with pytest.raises(ValueError, match=match):
        config_from_args(args)


def test_override_keys_are_unique_across_sections():
    model_keys = {f.name for f in dataclasses.fields(ModelConfig)}
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    assert not model_keys & train_keys
    assert parse_overrides(["--d-model=64"]) == {"d_model": "64"}


def test_every_key_is_documented_in_help():
    text = describe_keys()
    for cls in (ModelConfig, TrainConfig):
        for field in dataclasses.fields(cls):
            (line,) = [ln for ln in text.splitlines() if ln.startswith(f"  --{field.name} ")]
            assert line.split(")", 1)[1].strip(), f"--{field.name} has no comment in config.py"
