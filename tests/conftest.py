"""Suite-wide pytest hooks: case parametrization for the attention test base, GPU marker."""

from __future__ import annotations

import os

# GPU interpret mode runs each warpgroup of a CTA as its own XLA:CPU computation, and XLA may
# run that computation's host callbacks (the simulated barrier waits, which block) on its
# intra-op thread pool, one thread per core by default. On a 2-core machine two waits can fill
# the pool while the warpgroup they wait for has its next callback queued behind them: the
# kernel deadlocks at random (seen with 4 warpgroups per CTA; benchmarks/NOTES.md, "Session
# 16"). A pool larger than the waits that can block at once (one per warpgroup, at most 4, and
# the launching call) never fills up. Read when JAX creates its CPU client, so set it first.
os.environ.setdefault("PJRT_NPROC", "8")

import jax  # noqa: E402
import pytest  # noqa: E402


def pytest_generate_tests(metafunc):
    """Parametrize ``case``/``grad_case`` from the test class's CASES/GRAD_CASES."""
    for arg, attr in (("case", "CASES"), ("grad_case", "GRAD_CASES")):
        if arg in metafunc.fixturenames and hasattr(metafunc.cls, attr):
            cases = getattr(metafunc.cls, attr)
            metafunc.parametrize(arg, cases, ids=[c.id for c in cases])


def _has_gpu() -> bool:
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` run only where JAX sees a GPU (``pytest -m gpu`` there)."""
    if _has_gpu():
        return
    skip = pytest.mark.skip(reason="needs a GPU; run `pytest -m gpu` on a Hopper machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
