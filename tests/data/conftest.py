"""Shared fixtures: one small demo corpus and its prepared shards per session (xdist worker)."""

import pytest

from data.prepare import prepare
from data.synthetic import generate


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("corpus"), seed=7, train_docs=600)


@pytest.fixture(scope="session")
def prepared_dir(corpus_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    prepare(corpus_dir, out, vocab_size=1024, workers=1, progress=False)
    return out
