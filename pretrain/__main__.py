"""`python -m pretrain [--preset=NAME] [--key=value ...] [--resume]`: train a language model.

Examples:
  python -m pretrain --preset=tiny --data_dir=runs/demo_data/prepared --mixture=DC-6
  python -m pretrain --preset=1.3b --data_dir=/data/slimpajama_prepared --global_batch=512 \\
      --run_dir=runs/1.3b-dc6   # 512 × 2048 tokens a step, 64 microbatches
  python -m pretrain --resume --run_dir=runs/1.3b-dc6          # continue from the latest checkpoint
  python -m pretrain --resume --run_dir=runs/1.3b-dc6 --steps=200000   # ... and train longer

Every field of pretrain.config.ModelConfig and TrainConfig is a `--key=value` override; unknown
keys are errors. With --resume the configuration saved in RUN_DIR/config.json is used, with the
given overrides applied on top.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pretrain.config import (
    PRESETS,
    RunConfig,
    apply_overrides,
    config_from_args,
    describe_keys,
    parse_overrides,
)
from pretrain.train import NonFiniteLossError, train
from pretrain.xla_flags import apply_gpu_flags


def _resumed_config(argv: list[str]) -> RunConfig:
    """The saved configuration of the run named by --run_dir, with the other overrides applied."""
    overrides = parse_overrides(argv)
    if "run_dir" not in overrides:
        raise ValueError("--resume needs --run_dir=RUN_DIR (the run to continue)")
    if "preset" in overrides:
        raise ValueError("--resume uses the run's saved preset; drop --preset")
    saved = Path(overrides["run_dir"]) / "config.json"
    if not saved.is_file():
        raise ValueError(f"--resume: {saved} does not exist")
    return apply_overrides(RunConfig.load(saved), overrides)


def main(argv: list[str] | None = None) -> int:
    apply_gpu_flags()  # before JAX starts a backend
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print(describe_keys())
        print(f"presets: {', '.join(PRESETS)}")
        return 0
    resume = False
    for flag in ("--resume", "--resume=true", "--resume=1"):
        if flag in argv:
            argv.remove(flag)
            resume = True
    try:
        cfg = _resumed_config(argv) if resume else config_from_args(argv)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    try:
        train(cfg, resume=resume)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
