"""Shared fixture: a small prepared demo corpus."""

import pytest

import data


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """Prepared directory of the demo corpus (a few hundred documents per split)."""
    return data.make_demo_data(tmp_path_factory.mktemp("demo"), seed=0, train_docs=300)
