"""The demo data used by ``make train`` and the tests: generate + prepare, reusing finished work."""

from __future__ import annotations

from pathlib import Path

from data.prepare import prepare
from data.synthetic import generate


def make_demo_data(
    root: Path | str,
    seed: int = 0,
    vocab_size: int = 4096,
    workers: int | None = None,
    train_docs: int = 1500,
) -> Path:
    """Generates the synthetic corpus in ``root/corpus`` and prepares it in ``root/prepared``.

    Returns the prepared directory (for :func:`data.make_pipeline`). A second call with the same
    arguments reuses both (the corpus is regenerated only if ``root/corpus/planted_duplicates.json``
    is missing; prepare skips finished files).
    """
    root = Path(root)
    corpus = root / "corpus"
    if not (corpus / "planted_duplicates.json").is_file():
        generate(corpus, seed=seed, train_docs=train_docs)
    prepare(corpus, root / "prepared", vocab_size=vocab_size, workers=workers, progress=False)
    return root / "prepared"
