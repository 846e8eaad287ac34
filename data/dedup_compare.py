"""Our MinHash-LSH against ``datasketch`` on the same corpus: pairs found, precision/recall, speed.

Both use character 13-grams of the normalized text (documents >= 200 characters), 128 permutations
and LSH with 9 bands x 13 rows; they differ in the hash functions (ours: vectorized
multiply-add-shift over 64-bit shingle hashes; datasketch: SHA-1 of each shingle, then its affine
permutations). Ground truth is the exact Jaccard similarity of the shingle sets: precision is
measured on every pair a method reports, recall on all pairs of a sample of documents (a random
sample plus every document of a reported pair), both against ``jaccard >= threshold``.
``datasketch`` is a dev dependency.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from data import dedup, slimpajama


def _exact_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


def _true_pairs(
    sets: list[np.ndarray], members: np.ndarray, threshold: float
) -> set[tuple[int, int]]:
    sizes = np.array([len(sets[i]) for i in members])
    order = np.argsort(sizes)
    members, sizes = members[order], sizes[order]
    out = set()
    for x in range(len(members)):
        # J >= t needs |small| >= t |large|: only the next few sizes can match.
        hi = np.searchsorted(sizes, sizes[x] / threshold, side="right")
        for y in range(x + 1, hi):
            i, j = sorted((int(members[x]), int(members[y])))
            if _exact_jaccard(sets[i], sets[j]) >= threshold:
                out.add((i, j))
    return out


def _score(found: set, sets: list[np.ndarray], truth: set, sample: set, threshold: float) -> dict:
    true_found = sum(_exact_jaccard(sets[i], sets[j]) >= threshold for i, j in found)
    in_sample = {p for p in found if p[0] in sample and p[1] in sample}
    return {
        "pairs": len(found),
        "precision": true_found / len(found) if found else 1.0,
        "recall": len(in_sample & truth) / len(truth) if truth else 1.0,
    }


def compare_datasketch(
    corpus_dir: Path | str,
    split: str = "train",
    threshold: float = 0.8,
    sample_docs: int = 300,
    max_docs: int | None = None,
    seed: int = 0,
) -> dict:
    """Runs both MinHash-LSH implementations in one process on ``split`` and scores them.

    Returns ``{"docs", "threshold", "true_pairs_in_sample", "ours": {...}, "datasketch": {...}}``
    with ``pairs``, ``precision``, ``recall``, ``seconds`` and ``docs_per_s`` per implementation
    (time covers shingling, MinHash and LSH, not reading or normalizing).
    """
    from datasketch import MinHash, MinHashLSH

    norms = []
    for doc in slimpajama.iter_documents(corpus_dir, split):
        norm = dedup.normalize(doc.text)
        if len(norm) >= dedup.MIN_CHARS:
            norms.append(norm)
        if max_docs is not None and len(norms) >= max_docs:
            break
    t0 = time.perf_counter()
    sigs = dedup.minhash_batch([dedup.shingle_hashes(n) for n in norms])
    ours = dedup.candidate_pairs(sigs)
    t_ours = time.perf_counter() - t0

    t0 = time.perf_counter()
    lsh = MinHashLSH(num_perm=dedup.NUM_PERM, params=(dedup.BANDS, dedup.ROWS))
    hashes = []
    for i, norm in enumerate(norms):
        m = MinHash(num_perm=dedup.NUM_PERM)
        m.update_batch(
            [norm[k : k + dedup.NGRAM].encode("utf-8") for k in range(len(norm) - dedup.NGRAM + 1)]
        )
        lsh.insert(i, m)
        hashes.append(m)
    theirs = {tuple(sorted((i, j))) for i, m in enumerate(hashes) for j in lsh.query(m) if j != i}
    t_theirs = time.perf_counter() - t0

    sets = [np.unique(dedup.shingle_hashes(n)) for n in norms]
    rng = np.random.default_rng(seed)
    sample = set(rng.choice(len(norms), size=min(sample_docs, len(norms)), replace=False).tolist())
    sample |= {i for p in ours | theirs for i in p}
    truth = _true_pairs(sets, np.array(sorted(sample)), threshold)
    result = {
        "docs": len(norms),
        "threshold": threshold,
        "true_pairs_in_sample": len(truth),
        "sample_docs": len(sample),
    }
    for name, found, secs in (("ours", ours, t_ours), ("datasketch", theirs, t_theirs)):
        result[name] = _score(found, sets, truth, sample, threshold) | {
            "seconds": secs,
            "docs_per_s": len(norms) / max(secs, 1e-9),
        }
    return result
