"""SlimPajama data: reader, demo corpus, tokenization, mixtures, Grain pipeline, MinHash dedup.

Never imports JAX. The entry used by pretraining::

    it = data.make_pipeline(prepared_dir, mixture, seq_len, batch_size, seed, split="train",
                            process_index=0, process_count=1, worker_count=0)
    batch = next(it)  # dict of BATCH_KEYS -> np.int32 [batch_size, seq_len]
    state = it.get_state()  # JSON-able; it.set_state(state) continues exactly
    # Orbax: grain.checkpoint.CheckpointSave(it) / grain.checkpoint.CheckpointRestore(it)

``BATCH_KEYS`` = tokens, targets, segment_ids, positions, source_ids. ``targets == IGNORE_TARGET``
(-1) carries no loss; ``segment_ids`` start at 1 in every row; ``source_ids`` index :data:`SOURCES`.
``make_demo_data(root, seed)`` generates and prepares the demo corpus and returns the prepared dir.

Command line (each with ``--help``)::

    python -m data.synthetic --out CORPUS --seed 0              # demo corpus, seconds
    python -m data.prepare --corpus CORPUS --out PREP [--tokenizer tokenizer.json]
    python -m data.dedup --corpus CORPUS --out DEDUP --mode global|local
    python -m data.benchmark                                    # -> benchmarks/results/

Names load on first use, so the command-line tools (``python -m data.prepare`` ...) start without
Grain.
"""

_EXPORTS = {
    "make_demo_data": "data.demo",
    "PRESETS": "data.mixtures",
    "Mixture": "data.mixtures",
    "get_mixture": "data.mixtures",
    "BATCH_KEYS": "data.pipeline",
    "IGNORE_TARGET": "data.pipeline",
    "make_pipeline": "data.pipeline",
    "Manifest": "data.prepare",
    "load_manifest": "data.prepare",
    "prepare": "data.prepare",
    "SOURCES": "data.slimpajama",
    "SPLITS": "data.slimpajama",
    "CorpusError": "data.slimpajama",
    "Document": "data.slimpajama",
    "SkipReport": "data.slimpajama",
    "iter_documents": "data.slimpajama",
    "iter_file": "data.slimpajama",
    "generate": "data.synthetic",
}


def __getattr__(name):
    """Loads the public names lazily, so ``python -m data.<tool>`` runs cleanly and fast."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'data' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)


__all__ = [
    "BATCH_KEYS",
    "IGNORE_TARGET",
    "PRESETS",
    "SOURCES",
    "SPLITS",
    "CorpusError",
    "Document",
    "Manifest",
    "Mixture",
    "SkipReport",
    "generate",
    "get_mixture",
    "iter_documents",
    "iter_file",
    "load_manifest",
    "make_demo_data",
    "make_pipeline",
    "prepare",
]
