"""`python -m pretrain.plot RUN_DIR [--out PATH]`: loss curves of a run to a PNG.

Left: training loss (total, thick) and per source. Right: validation loss per source (from the
periodic evaluations). Reads RUN_DIR/metrics.jsonl; writes RUN_DIR/loss.png by default.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the non-interactive backend

__all__ = ["plot_run"]


def _series(records: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    series: dict[str, tuple[list[int], list[float]]] = {}
    for r in records:
        for key, value in r.items():
            if key == "loss" or key.startswith("loss/"):
                steps, values = series.setdefault(key, ([], []))
                steps.append(r["step"])
                values.append(value)
    return series


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draws the run's loss curves; returns the PNG's path."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise FileNotFoundError(f"{metrics} does not exist (is {run_dir} a training run?)")
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    panels = [("train", "training loss"), ("eval", "validation loss")]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True)
    for ax, (kind, title) in zip(axes, panels, strict=True):
        series = _series([r for r in records if r["kind"] == kind])
        for key, (steps, values) in sorted(series.items()):
            total = key == "loss"
            ax.plot(
                steps,
                values,
                label="all sources" if total else key.removeprefix("loss/"),
                linewidth=2.5 if total else 1.0,
                color="black" if total else None,
                marker=None if kind == "train" else "o",
                markersize=3,
            )
        ax.set_title(title if series else f"{title} (no records)")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize=8)
    axes[0].set_ylabel("cross-entropy (nats/token)")
    fig.suptitle(str(run_dir))
    fig.tight_layout()
    out = Path(out) if out is not None else run_dir / "loss.png"
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pretrain.plot",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", help="a training run directory (holds metrics.jsonl)")
    parser.add_argument("--out", default=None, help="PNG path (default RUN_DIR/loss.png)")
    args = parser.parse_args(argv)
    print(plot_run(args.run_dir, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
