"""The multiprocessing context for data's worker pools."""

import multiprocessing
import sys


def context() -> multiprocessing.context.BaseContext:
    """``fork`` (cheap), or ``spawn`` when JAX is loaded here (its threads make fork unsafe)."""
    return multiprocessing.get_context("spawn" if "jax" in sys.modules else "fork")
