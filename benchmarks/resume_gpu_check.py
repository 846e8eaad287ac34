"""Stopped, resumed in a fresh process, same losses: the `make train` demo run on every device.

``PYTHONPATH=. python benchmarks/resume_gpu_check.py OUT_JSON [--key=value ...]`` (repo root)

The demo's run (`pretrain.demo.demo_config`: the tiny preset on mixture DC-6 of the demo corpus in
runs/demo_data, generated when missing) with a loss record every step, on a mesh over all visible
devices (all-FSDP; `--mesh_data=2` adds a data-parallel axis); `--key=value` overrides the
configuration (e.g. `--steps=20` on a CPU). Run A trains N = `steps` steps without stopping. Run B,
the same configuration, stops at N/2 and saves a checkpoint (what Ctrl-C does), and a fresh
`python -m pretrain --resume` process continues it to N. B's training losses at N/2+1..N and its
validation losses after N/2 must equal A's within TOLERANCE; steps 1..N/2 are compared too (both
runs in this process: run-to-run noise). Table last, JSON to OUT_JSON; exit 1 on a mismatch.

XLA is asked for deterministic GPU kernels (scatter-adds without atomics; no autotuning, which could
pick other GEMM algorithms in the fresh process), so the runs should be bit-identical; on the CPU
they are. TOLERANCE allows rounding noise and no resume bug. Measured on 4 fake CPU devices (2 x 2
mesh), default 250 steps stopped at 125: resuming with the gradient summed in 4 microbatches instead
of 1 (other rounding at each resumed step) moves the losses by at most 9.5e-7, one float32 ulp;
resuming without the data position moves them by up to 0.33 (0.31 at the first resumed step), with
the AdamW state reset by up to 0.26 (4.5e-3 at the second). The same rounding difference from step
1 on grows to 0.16 in the steps after the warm-up: the margin is for a stop well past them.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import jax

from pretrain.config import parse_overrides
from pretrain.demo import demo_config
from pretrain.train import train
from pretrain.xla_flags import apply_gpu_flags

DETERMINISTIC_FLAGS = "--xla_gpu_exclude_nondeterministic_ops=true --xla_gpu_autotune_level=0"
TOLERANCE = 1e-4  # max |loss_A - loss_B|: 100x the rounding noise above, 45x below the bugs


def _losses(run_dir: Path, kind: str) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if r["kind"] == kind}


def _compare(name: str, a: dict[int, float], b: dict[int, float], steps: list[int]) -> dict:
    missing = [s for s in steps if s not in b]
    diffs = [abs(a[s] - b[s]) for s in steps if s in b]
    return {
        "range": name,
        "records": len(steps),
        "missing_in_b": missing,
        "max_abs_diff": max(diffs, default=0.0),
        "bit_identical": not missing and all(a[s] == b[s] for s in steps),
        "passed": not missing and max(diffs, default=0.0) <= TOLERANCE,
    }


def main(out_path: str, argv: list[str]) -> int:
    # before JAX starts a backend; the resumed process inherits them (and adds the same GPU flags)
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {DETERMINISTIC_FLAGS}".strip()
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # room for the fresh process
    apply_gpu_flags()
    overrides = {"log_every": "1", "progress": "false", **parse_overrides(argv)}
    with tempfile.TemporaryDirectory(prefix="resume-check-") as tmp:
        run_a, run_b = Path(tmp) / "a", Path(tmp) / "b"
        cfg_a, cfg_b = demo_config(run_a, overrides), demo_config(run_b, overrides)
        steps, half = cfg_a.train.steps, cfg_a.train.steps // 2
        train(cfg_a)
        train(cfg_b, stop_at=half)
        resume = [sys.executable, "-m", "pretrain", "--resume", f"--run_dir={run_b}"]
        if subprocess.run(resume).returncode:
            raise SystemExit(f"the resumed process failed: {shlex.join(resume)}")
        train_a, train_b = _losses(run_a, "train"), _losses(run_b, "train")
        eval_a, eval_b = _losses(run_a, "eval"), _losses(run_b, "eval")
        resumed = list(range(half + 1, steps + 1))
        rows = [
            _compare(f"train 1..{half} (one process)", train_a, train_b, list(range(1, half + 1))),
            _compare(f"train {half + 1}..{steps} (resumed)", train_a, train_b, resumed),
            _compare(
                f"eval after {half} (resumed)", eval_a, eval_b, [s for s in eval_a if s > half]
            ),
        ]
        per_step = [[s, train_a[s], train_b.get(s)] for s in resumed]
    mesh = {"data": cfg_a.train.mesh_data, "fsdp": jax.device_count() // cfg_a.train.mesh_data}
    result = {
        "passed": all(r["passed"] for r in rows),
        "tolerance": TOLERANCE,
        "devices": jax.device_count(),
        "device": jax.devices()[0].device_kind,
        "mesh": mesh,
        "steps": steps,
        "stopped_at": half,
        "comparisons": rows,
        "resumed_losses": per_step,  # [step, uninterrupted, resumed]
        "config": cfg_a.to_dict(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "jax_version": jax.__version__,
        "xla_flags": os.environ["XLA_FLAGS"],
        "command": shlex.join(["python", *sys.argv]),
    }
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    Path(out_path).write_text(json.dumps(result, indent=1) + "\n")
    print(f"\n{result['devices']} x {result['device']}, mesh {mesh}, {steps} steps, stop at {half}")
    print("| losses | records | max abs diff | bit-identical | within tolerance |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['range']} | {r['records']} | {r['max_abs_diff']:.3g} | {r['bit_identical']} "
            f"| {r['passed']} |"
        )
    print(f"{'PASSED' if result['passed'] else 'FAILED'} (tolerance {TOLERANCE}); wrote {out_path}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1].startswith("--"):
        raise SystemExit(__doc__)
    raise SystemExit(main(sys.argv[1], sys.argv[2:]))
