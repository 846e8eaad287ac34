"""MinHash-LSH near-duplicate removal, SlimPajama's recipe, in global or local mode.

``python -m data.dedup --corpus DIR --out DIR --mode global|local [--split train] [--workers N]``

Recipe: NFC, lowercase, strip punctuation, collapse whitespace; drop documents shorter than 200
characters after that; character 13-grams; 128-permutation MinHash (multiply-add-shift hashes,
vectorized over all shingles of a batch of documents); LSH with 9 bands x 13 rows; connected
components of the candidate pairs (union-find); keep the first document (corpus order) of every
component. ``global`` links documents across all sources, ``local`` only within a source.

Writes the kept corpus in the input's layout (same relative file paths), ``dedup_stats.json`` and a
per-source ``dedup_table.md`` (documents and bytes before/after, short documents dropped, byte
duplication rate among the documents of >= 200 characters). MinHash runs in ``workers``
processes, one input file per task.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import time
import unicodedata
from pathlib import Path

import numpy as np
import zstandard

from data import _mp, slimpajama

NGRAM = 13
NUM_PERM = 128
BANDS = 9
ROWS = 13
MIN_CHARS = 200
_PUNCT = re.compile(r"[^\w\s]|_")
_SPACE = re.compile(r"\s+")
_CHUNK = 4096
_SHINGLES_PER_FLUSH = 1 << 22


def normalize(text: str) -> str:
    """NFC, lowercase, punctuation removed, whitespace runs collapsed to one space, stripped."""
    text = unicodedata.normalize("NFC", text).lower()
    return _SPACE.sub(" ", _PUNCT.sub("", text)).strip()


def _permutations(num_perm: int, seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) | np.uint64(1)  # odd multipliers
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    return a, b


_A, _B = _permutations(NUM_PERM)
_POW = np.array([pow(1_000_003, NGRAM - 1 - j, 2**64) for j in range(NGRAM)], dtype=np.uint64)


def shingle_hashes(norm: str, ngram: int = NGRAM) -> np.ndarray:
    """64-bit hashes of every character ``ngram`` of ``norm`` (uint64 [len - ngram + 1])."""
    cp = np.frombuffer(norm.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    n = len(cp) - ngram + 1
    if n <= 0:
        return np.zeros(0, dtype=np.uint64)
    pow_ = (
        _POW
        if ngram == NGRAM
        else np.array([pow(1_000_003, ngram - 1 - j, 2**64) for j in range(ngram)], dtype=np.uint64)
    )
    h = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(ngram):
            h += cp[j : j + n] * pow_[j]
        h ^= h >> np.uint64(29)
    return h


def minhash_batch(shingles: list[np.ndarray]) -> np.ndarray:
    """MinHash signatures (uint32 [len(shingles), NUM_PERM]) of non-empty shingle-hash arrays.

    Hash k of x is ``((a_k * x + b_k) mod 2**64) >> 32`` (multiply-add-shift, a_k odd). All shingles
    are hashed in column chunks of 4096 (a [NUM_PERM, 4096] uint64 block fits in cache), reduced per
    document with ``np.minimum.reduceat`` and merged into the running per-document minimum.
    """
    out = np.full((len(shingles), NUM_PERM), np.iinfo(np.uint32).max, dtype=np.uint32)
    if not shingles:
        return out
    lengths = np.array([len(s) for s in shingles], dtype=np.int64)
    if (lengths == 0).any():
        raise ValueError("minhash_batch: every document needs at least one shingle")
    x_all = np.concatenate(shingles)
    doc_all = np.repeat(np.arange(len(shingles)), lengths)
    for start in range(0, len(x_all), _CHUNK):
        x, doc = x_all[start : start + _CHUNK], doc_all[start : start + _CHUNK]
        with np.errstate(over="ignore"):
            hv = (x[None, :] * _A[:, None] + _B[:, None]) >> np.uint64(32)
        firsts = np.flatnonzero(np.r_[True, doc[1:] != doc[:-1]])
        mins = np.minimum.reduceat(hv, firsts, axis=1).T.astype(np.uint32)
        ids = doc[firsts]
        out[ids] = np.minimum(out[ids], mins)
    return out


@dataclasses.dataclass
class _FileResult:
    path: str
    sources: list[str]  # per document
    nbytes: list[int]  # UTF-8 bytes of the original text, per document
    eligible: np.ndarray  # bool: long enough after normalization
    signatures: np.ndarray  # uint32 [n_eligible, NUM_PERM]
    skips: dict


def _signatures_of_file(args: tuple[str, str]) -> _FileResult:
    path, on_error = args
    report = slimpajama.SkipReport()
    sources, nbytes, eligible, shingles, sigs = [], [], [], [], []
    pending = 0
    for doc in slimpajama.iter_file(path, on_error=on_error, report=report):
        sources.append(doc.source)
        nbytes.append(len(doc.text.encode("utf-8")))
        norm = normalize(doc.text)
        ok = len(norm) >= MIN_CHARS
        eligible.append(ok)
        if ok:
            shingles.append(shingle_hashes(norm))
            pending += len(shingles[-1])
        if pending >= _SHINGLES_PER_FLUSH:  # bound memory on large files
            sigs.append(minhash_batch(shingles))
            shingles, pending = [], 0
    sigs.append(minhash_batch(shingles))
    sigs = np.concatenate(sigs)
    return _FileResult(
        path, sources, nbytes, np.array(eligible, dtype=bool), sigs, dict(report.counts)
    )


class UnionFind:
    """Disjoint sets over ``0..n-1``, path halving; the smallest index of a set is its root."""

    def __init__(self, n: int):
        self.parent = np.arange(n, dtype=np.int64)

    def find(self, x: int) -> int:
        p = self.parent
        while p[x] != x:
            p[x] = p[p[x]]
            x = p[x]
        return int(x)

    def union(self, x: int, y: int) -> None:
        rx, ry = self.find(x), self.find(y)
        if rx != ry:
            self.parent[max(rx, ry)] = min(rx, ry)

    def roots(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))], dtype=np.int64)


def lsh_candidate_groups(
    signatures: np.ndarray, groups: np.ndarray | None = None
) -> list[np.ndarray]:
    """Documents sharing an LSH bucket (BANDS x ROWS): one index array per bucket of >= 2 docs.

    ``groups`` (int [n]) restricts buckets to documents of the same group (local mode).
    """
    n = len(signatures)
    out = []
    for band in range(BANDS):
        cols = signatures[:, band * ROWS : (band + 1) * ROWS]
        if groups is not None:
            cols = np.concatenate([groups.astype(np.uint32)[:, None], cols], axis=1)
        keys = np.ascontiguousarray(cols).view(
            np.dtype((np.void, cols.dtype.itemsize * cols.shape[1]))
        )[:, 0]
        _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        dup = counts[inverse] > 1
        if not dup.any():
            continue
        idx = np.arange(n)[dup]
        inv = inverse[dup]
        order = np.argsort(inv, kind="stable")
        idx, inv = idx[order], inv[order]
        bounds = np.flatnonzero(np.diff(inv)) + 1
        out.extend(np.split(idx, bounds))
    return out


def candidate_pairs(
    signatures: np.ndarray, groups: np.ndarray | None = None
) -> set[tuple[int, int]]:
    """All pairs ``(i < j)`` sharing at least one LSH bucket."""
    pairs = set()
    for members in lsh_candidate_groups(signatures, groups):
        m = members.tolist()
        for a in range(len(m)):
            for b in range(a + 1, len(m)):
                pairs.add((m[a], m[b]))
    return pairs


def components(signatures: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """Root (smallest member index) of every document's connected component of LSH candidates."""
    uf = UnionFind(len(signatures))
    for members in lsh_candidate_groups(signatures, groups):
        first = int(members[0])
        for other in members[1:]:
            uf.union(first, int(other))
    return uf.roots()


@dataclasses.dataclass(frozen=True)
class DedupResult:
    """Per-source table (docs/bytes before and after, short docs, dup rate) and timing."""

    mode: str
    table: dict
    docs: int
    seconds_minhash: float
    seconds_total: float
    skips: dict

    @property
    def docs_per_s(self) -> float:
        return self.docs / max(self.seconds_total, 1e-9)

    def markdown(self) -> str:
        lines = [
            f"Dedup mode: {self.mode}",
            "",
            "| source | docs before | docs after | bytes before | bytes after | short docs "
            "| byte dup rate |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for s, r in self.table.items():
            lines.append(
                f"| {s} | {r['docs_before']} | {r['docs_after']} | {r['bytes_before']} "
                f"| {r['bytes_after']} | {r['short_docs']} | {100 * r['dup_rate']:.2f}% |"
            )
        return "\n".join(lines) + "\n"


def _write_kept(args: tuple[str, str, np.ndarray, str]) -> None:
    path, out_path, keep, on_error = args
    rows = []
    report = slimpajama.SkipReport()
    for k, doc in zip(
        keep, slimpajama.iter_file(path, on_error=on_error, report=report), strict=True
    ):
        if k:
            rows.append(json.dumps({"text": doc.text, "meta": doc.meta}, ensure_ascii=False) + "\n")
    payload = "".join(rows).encode("utf-8")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(
        zstandard.ZstdCompressor(level=3).compress(payload)
        if out.name.endswith(".zst")
        else payload
    )
    os.replace(tmp, out)


def dedup(
    corpus_dir: Path | str,
    out_dir: Path | str | None,
    mode: str = "global",
    split: str = "train",
    workers: int | None = None,
    on_error: str = "raise",
) -> DedupResult:
    """Deduplicates ``split`` of ``corpus_dir`` into ``out_dir`` (``None``: only count).

    Args:
      mode: ``"global"`` (across sources) or ``"local"`` (within each source).
      workers: processes for reading + MinHash and for writing (None: CPU count).
      on_error: ``"raise"`` or ``"skip"`` for bad input (see :mod:`data.slimpajama`).
    """
    if mode not in ("global", "local"):
        raise ValueError(f"mode must be 'global' or 'local', got {mode!r}")
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    files = slimpajama.list_files(corpus_dir, split)
    if not files:
        raise FileNotFoundError(f"no corpus files for split {split!r} under {corpus_dir}")
    t0 = time.perf_counter()
    pool = None
    if workers > 1 and len(files) > 1:
        pool = _mp.context().Pool(min(workers, len(files)))
    try:
        return _dedup(corpus_dir, out_dir, mode, split, workers, on_error, files, pool, t0)
    finally:
        if pool is not None:
            pool.close()
            pool.join()


def _dedup(corpus_dir, out_dir, mode, split, workers, on_error, files, pool, t0) -> DedupResult:
    tasks = [(str(p), on_error) for p in files]
    results = (
        pool.map(_signatures_of_file, tasks) if pool else [_signatures_of_file(t) for t in tasks]
    )
    t_minhash = time.perf_counter() - t0

    sources = np.array([s for r in results for s in r.sources])
    nbytes = np.array([b for r in results for b in r.nbytes], dtype=np.int64)
    eligible = np.concatenate([r.eligible for r in results]) if len(sources) else np.zeros(0, bool)
    sigs = np.concatenate([r.signatures for r in results])
    elig_idx = np.flatnonzero(eligible)
    groups = None
    if mode == "local":
        groups = np.array([slimpajama.SOURCES.index(s) for s in sources[elig_idx]], dtype=np.int64)
    roots = components(sigs, groups)
    keep = np.zeros(len(sources), dtype=bool)
    keep[elig_idx] = roots == np.arange(len(elig_idx))

    if out_dir is not None:
        base = slimpajama.split_dir(corpus_dir, split)
        out_base = Path(out_dir) / split if base != Path(corpus_dir) else Path(out_dir)
        offsets = np.cumsum([0] + [len(r.sources) for r in results])
        write_tasks = [
            (
                r.path,
                str(out_base / Path(r.path).relative_to(base)),
                keep[offsets[i] : offsets[i + 1]],
                on_error,
            )
            for i, r in enumerate(results)
        ]
        if pool:
            pool.map(_write_kept, write_tasks)
        else:
            for t in write_tasks:
                _write_kept(t)
    seconds = time.perf_counter() - t0

    table = {}
    for s in slimpajama.SOURCES:
        m = sources == s
        if not m.any():
            continue
        before, after = int(nbytes[m].sum()), int(nbytes[m & keep].sum())
        short = int(nbytes[m & ~eligible].sum())
        table[s] = {
            "docs_before": int(m.sum()),
            "docs_after": int((m & keep).sum()),
            "bytes_before": before,
            "bytes_after": after,
            "short_docs": int((m & ~eligible).sum()),
            "short_bytes": short,
            # Bytes removed as duplicates over bytes of the documents long enough to compare.
            "dup_rate": 1.0 - after / (before - short) if before > short else 0.0,
        }
    skips: dict = {}
    for r in results:
        for k, v in r.skips.items():
            skips[k] = skips.get(k, 0) + v
    result = DedupResult(mode, table, len(sources), t_minhash, seconds, skips)
    if out_dir is not None:
        stats = dataclasses.asdict(result) | {
            "docs_per_s": result.docs_per_s,
            "split": split,
            "workers": workers,
        }
        (Path(out_dir) / "dedup_stats.json").write_text(json.dumps(stats, indent=1))
        (Path(out_dir) / "dedup_table.md").write_text(result.markdown())
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m data.dedup",
        description="MinHash-LSH deduplication with SlimPajama's recipe (13-grams, 128 perms, "
        "9x13 LSH). global: across all sources; local: within each source.",
    )
    parser.add_argument("--corpus", required=True, help="SlimPajama-format corpus root")
    parser.add_argument(
        "--out", required=True, help="where the kept corpus and the tables are written"
    )
    parser.add_argument("--mode", choices=("global", "local"), default="global")
    parser.add_argument("--split", default="train", choices=slimpajama.SPLITS)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: CPU count)")
    parser.add_argument("--on-error", choices=("raise", "skip"), default="raise")
    args = parser.parse_args(argv)
    result = dedup(args.corpus, args.out, args.mode, args.split, args.workers, args.on_error)
    print(result.markdown())
    print(
        f"{result.docs} documents in {result.seconds_total:.2f}s: {result.docs_per_s:,.0f} docs/s "
        f"(MinHash {result.seconds_minhash:.2f}s)"
    )
    if result.skips:
        print("skipped: " + ", ".join(f"{k}={v}" for k, v in sorted(result.skips.items())))


if __name__ == "__main__":
    main()
