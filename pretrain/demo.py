"""`python -m pretrain.demo` (what `make train` runs): the whole pipeline on a laptop CPU.

1. generates the synthetic SlimPajama-format demo corpus and prepares it (runs/demo_data; reused
   by later runs), 2. trains the `tiny` preset on mixture DC-6 for a few minutes, printing the
loss as it falls and per-source validation losses, 3. draws the loss curves and prints where the
checkpoint, metrics and plot are, with the commands to resume, sample and plot.

Extra `--key=value` arguments override the run configuration (e.g. `--steps=100`).
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

import data
from pretrain.config import RunConfig, apply_overrides, make_config, parse_overrides
from pretrain.plot import plot_run
from pretrain.train import train

DEMO_DATA = Path("runs/demo_data")
DEMO_SETTINGS = {
    "mixture": "DC-6",
    "seq_len": 128,
    "global_batch": 16,
    "steps": 250,
    "warmup_steps": 25,
    "lr": 3e-3,
    "log_every": 10,
    "eval_every": 50,
    "checkpoint_every": 50,
}


def demo_config(run_dir: str | Path, overrides: dict | None = None) -> RunConfig:
    """The demo run in `run_dir`: the `tiny` preset with DEMO_SETTINGS on the demo corpus
    (generated and prepared in DEMO_DATA when missing), then `overrides` (`{key: value}`)."""
    prepared = data.make_demo_data(DEMO_DATA, seed=0)
    vocab = data.load_manifest(prepared).vocab_size
    cfg = make_config(
        "tiny",
        {**DEMO_SETTINGS, "vocab_size": vocab, "data_dir": str(prepared), "run_dir": str(run_dir)},
    )
    return apply_overrides(cfg, overrides or {})


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    overrides = parse_overrides(argv)
    print(f"[1/3] demo corpus: generating and preparing it in {DEMO_DATA} (reused when present)")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    cfg = demo_config(Path("runs") / f"demo-{stamp}", overrides)
    run_dir = Path(cfg.train.run_dir)
    print(
        f"[2/3] training `tiny` on {cfg.train.mixture} for {cfg.train.steps} steps "
        "(Ctrl-C saves a checkpoint and stops)"
    )
    train(cfg)
    print("[3/3] plotting")
    plot = plot_run(run_dir)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    ckpts = sorted((run_dir / "checkpoints").iterdir(), key=lambda p: int(p.name))
    print(
        f"\ntraining loss: {trained[0]['loss']:.3f} (step {trained[0]['step']}) -> "
        f"{trained[-1]['loss']:.3f} (step {trained[-1]['step']})"
    )
    if evals:
        per_source = ", ".join(
            f"{k.removeprefix('loss/')} {v:.3f}"
            for k, v in evals[-1].items()
            if k.startswith("loss/")
        )
        print(
            f"validation loss at step {evals[-1]['step']}: {evals[-1]['loss']:.3f} ({per_source})"
        )
    print(f"checkpoint:  {ckpts[-1]}")
    print(
        f"metrics:     {run_dir / 'metrics.jsonl'}  (TensorBoard: tensorboard --logdir {run_dir})"
    )
    print(f"plot:        {plot}")
    print(f"sample:      python -m pretrain.generate --checkpoint {run_dir} --prompt 'The '")
    print(
        f"train more:  python -m pretrain --resume --run_dir={run_dir} "
        f"--steps={2 * cfg.train.steps}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
