import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pretrain import __main__ as cli
from pretrain import benchmark, demo
from pretrain.generate import generate, load_model, sample_next
from pretrain.plot import plot_run
from pretrain.train import train
from tests.pretrain.helpers import small_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plot_draws_train_and_eval_curves(tmp_path):
    rng = np.random.default_rng(0)
    lines = []
    for step in range(10, 60, 10):
        lines.append(
            {
                "step": step,
                "kind": "train",
                "loss": 8 - step / 20 + rng.random(),
                "loss/C4": 7.5 - step / 20,
                "loss/Github": 8.5 - step / 25,
            }
        )
        if step % 20 == 0:
            lines.append({"step": step, "kind": "eval", "loss": 7 - step / 30, "loss/C4": 6.9})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    out = plot_run(tmp_path)
    assert out == tmp_path / "loss.png" and out.read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        plot_run(tmp_path / "missing")


def test_top_p_keeps_the_smallest_nucleus():
    logits = jnp.log(jnp.asarray([0.05, 0.15, 0.5, 0.3]))
    keys = jax.random.split(jax.random.key(0), 2000)
    draw = jax.vmap(lambda k, p: sample_next(logits, k, 1.0, p), in_axes=(0, None))
    assert set(np.asarray(draw(keys, 0.4)).tolist()) == {2}
    assert set(np.asarray(draw(keys, 0.7)).tolist()) == {2, 3}  # 0.5 + 0.3 reaches 0.7
    counts = np.bincount(np.asarray(draw(keys, 1.0)), minlength=4) / len(keys)
    np.testing.assert_allclose(counts, [0.05, 0.15, 0.5, 0.3], atol=0.04)
    assert int(sample_next(logits, keys[0], 0.0, 0.9)) == 2  # temperature 0: greedy


def test_generate_from_a_checkpoint(tmp_path, demo_data):
    cfg = small_config(tmp_path / "run", demo_data, steps=2)
    train(cfg)
    model, loaded = load_model(tmp_path / "run")
    assert loaded == cfg
    prompt = [5, 17, 300]
    greedy = generate(model, prompt, max_new_tokens=6, temperature=0.0, top_p=1.0, eos_id=None)
    assert len(greedy) == 6 and all(0 <= t < cfg.model.vocab_size for t in greedy)
    again = generate(model, prompt, max_new_tokens=6, temperature=0.0, top_p=1.0, eos_id=None)
    assert greedy == again
    model_at_step, _ = load_model(tmp_path / "run" / "checkpoints" / "2")
    assert (
        generate(model_at_step, prompt, max_new_tokens=6, temperature=0.0, top_p=1.0, eos_id=None)
        == greedy
    )
    with pytest.raises(ValueError, match="top_p"):
        generate(model, prompt, max_new_tokens=1, temperature=1.0, top_p=0.0, eos_id=None)


def test_benchmark_runs_on_cpu_with_the_tiny_preset(tmp_path):
    out = tmp_path / "bench.json"
    code = benchmark.main(
        [
            "--preset",
            "tiny",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--seq_len",
            "32",
            "--batch_per_device",
            "2",
            "--attention",
            "auto,cudnn",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    auto, cudnn = json.loads(out.read_text())
    assert (auto["attention"], cudnn["attention"]) == ("auto", "cudnn")
    for key in (
        "preset",
        "attention",
        "devices",
        "seq_len",
        "global_batch",
        "tokens_per_s",
        "mfu",
        "step_ms",
        "device",
        "date",
        "jax_version",
        "command",
    ):
        assert key in auto, key
    assert auto["tokens_per_s"] > 0 and 0 < auto["mfu"] < 1
    if jax.default_backend() == "cpu":
        assert "error" in cudnn and "tokens_per_s" not in cudnn  # a failing variant is recorded
    assert out.with_suffix(".md").read_text().startswith("| preset")


def test_benchmark_scaling_is_relative_to_the_same_variant_on_one_device():
    def rec(devices, tokens_per_s, attention="auto", **extra):
        return {
            "attention": attention,
            "remat": "dots",
            "documents": "packed",
            "devices": devices,
            "tokens_per_s": tokens_per_s,
            **extra,
        }

    records = [
        rec(4, 360.0),
        rec(1, 100.0),
        rec(2, 150.0, attention="cudnn"),
        rec(2, 0.0, error="OOM"),
    ]
    benchmark._add_scaling(records)
    assert records[0]["scaling_efficiency"] == 0.9 and records[1]["scaling_efficiency"] == 1.0
    assert "scaling_efficiency" not in records[2] and "scaling_efficiency" not in records[3]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--bogus=1"], "unknown config key --bogus"),
        (["--resume"], "--resume needs --run_dir"),
        (["--resume", "--run_dir=/nonexistent/run"], "does not exist"),
    ],
)
def test_cli_errors(argv, message):
    with pytest.raises(SystemExit, match=message):
        cli.main(argv)


def test_demo_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(
        demo,
        "DEMO_SETTINGS",
        {
            **demo.DEMO_SETTINGS,
            "steps": 3,
            "warmup_steps": 1,
            "log_every": 1,
            "eval_every": 3,
            "checkpoint_every": 3,
            "eval_batches": 1,
            "seq_len": 32,
            "global_batch": 4,
        },
    )
    assert demo.main(["--progress=false", "--n_layers=1"]) == 0
    printed = capsys.readouterr().out
    assert "training loss:" in printed and "validation loss at step 3" in printed
    (run_dir,) = (tmp_path / "runs").glob("demo-*")
    assert (run_dir / "loss.png").is_file() and (run_dir / "checkpoints" / "3").is_dir()
