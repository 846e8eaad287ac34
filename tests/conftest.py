"""Suite-wide pytest hooks: case parametrization for the attention test base, GPU marker."""

from __future__ import annotations

import jax
import pytest


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
