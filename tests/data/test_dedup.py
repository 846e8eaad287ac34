import json

import numpy as np
import pytest

from data import dedup
from data.slimpajama import iter_documents


def test_normalize():
    assert dedup.normalize("Cafe\u0301,  HELLO!\n\tWorld_ (x)") == "café hello world x"


@pytest.mark.parametrize("keep", [0.5, 0.8, 0.95])
def test_minhash_estimates_jaccard(keep):
    rng = np.random.default_rng(int(keep * 100))
    shared = rng.integers(0, 2**63, size=int(3000 * keep), dtype=np.uint64)
    a = np.concatenate([shared, rng.integers(0, 2**63, size=3000 - len(shared), dtype=np.uint64)])
    b = np.concatenate([shared, rng.integers(0, 2**63, size=3000 - len(shared), dtype=np.uint64)])
    exact = len(shared) / (6000 - len(shared))
    sig = dedup.minhash_batch([a, b, rng.permutation(a)])
    assert np.array_equal(sig[0], sig[2])  # a set: order does not matter
    assert abs(float(np.mean(sig[0] == sig[1])) - exact) < 0.12


def test_lsh_and_union_find():
    sig = np.random.default_rng(0).integers(0, 2**32, size=(6, dedup.NUM_PERM), dtype=np.uint32)
    sig[3] = sig[0]
    sig[5, : dedup.ROWS] = sig[3, : dedup.ROWS]  # shares one band with 3 -> same component as 0
    sig[4, dedup.ROWS : 2 * dedup.ROWS] = sig[1, dedup.ROWS : 2 * dedup.ROWS]
    assert dedup.candidate_pairs(sig) == {(0, 3), (0, 5), (3, 5), (1, 4)}
    np.testing.assert_array_equal(dedup.components(sig), [0, 1, 2, 0, 1, 0])
    groups = np.array([0, 0, 0, 0, 1, 1])  # local: 4 and 5 live in another group
    np.testing.assert_array_equal(dedup.components(sig, groups), [0, 1, 2, 0, 4, 5])


@pytest.fixture(scope="module")
def dedup_runs(corpus_dir, tmp_path_factory):
    runs = {}
    for mode in ("global", "local"):
        out = tmp_path_factory.mktemp(mode)
        runs[mode] = (
            dedup.dedup(corpus_dir, out, mode=mode, workers=2 if mode == "global" else 1),
            out,
        )
    return runs


def _kept_ids(out):
    return {d.meta["synthetic_id"] for d in iter_documents(out, "train")}


def test_finds_planted_duplicates_without_false_positives(corpus_dir, dedup_runs):
    planted = json.loads((corpus_dir / "planted_duplicates.json").read_text())
    docs = {d.meta["synthetic_id"]: d for d in iter_documents(corpus_dir, "train")}
    long_ids = {i for i, d in docs.items() if len(dedup.normalize(d.text)) >= dedup.MIN_CHARS}
    involved = {i for pairs in planted.values() for p in pairs for i in p}
    for mode, (result, out) in dedup_runs.items():
        kept = _kept_ids(out)
        kinds = ("exact_within", "near_within") + (
            ("exact_cross", "near_cross") if mode == "global" else ()
        )
        for kind in kinds:
            for a, b in planted[kind]:
                assert not (a in kept and b in kept), (mode, kind, a, b)
        removed = long_ids - kept
        assert removed <= involved, f"{mode}: false positives {sorted(removed - involved)[:5]}"
        assert not kept - long_ids  # short documents are dropped
        assert sum(r["docs_after"] for r in result.table.values()) == len(kept)
        assert result.docs == len(docs) and result.docs_per_s > 0


def test_global_removes_cross_source_duplicates_that_local_keeps(corpus_dir, dedup_runs):
    planted = json.loads((corpus_dir / "planted_duplicates.json").read_text())
    kept = {mode: _kept_ids(out) for mode, (_, out) in dedup_runs.items()}
    cross = planted["exact_cross"] + planted["near_cross"]
    assert sum(a in kept["global"] and b in kept["global"] for a, b in cross) == 0
    both_local = sum(a in kept["local"] and b in kept["local"] for a, b in cross)
    assert both_local >= 0.8 * len(cross)  # (the rest lost a copy to a within-source duplicate)
    g, loc = dedup_runs["global"][0].table, dedup_runs["local"][0].table
    for source in ("RedPajamaC4", "RedPajamaWikipedia", "RedPajamaStackExchange"):
        assert g[source]["docs_after"] + g["RedPajamaCommonCrawl"]["docs_after"] < (
            loc[source]["docs_after"] + loc["RedPajamaCommonCrawl"]["docs_after"]
        )
    assert sum(r["docs_after"] for r in g.values()) < sum(r["docs_after"] for r in loc.values())


def test_outputs_same_layout_and_tables(corpus_dir, dedup_runs):
    _, out = dedup_runs["global"]
    src = sorted(
        p.relative_to(corpus_dir / "train") for p in (corpus_dir / "train").rglob("*.jsonl.zst")
    )
    dst = sorted(p.relative_to(out / "train") for p in (out / "train").rglob("*.jsonl.zst"))
    assert src == dst
    stats = json.loads((out / "dedup_stats.json").read_text())
    assert stats["mode"] == "global" and "byte dup rate" in (out / "dedup_table.md").read_text()
    for row in stats["table"].values():
        assert 0 <= row["dup_rate"] < 1 and row["bytes_after"] <= row["bytes_before"]


def test_bad_arguments_and_help(corpus_dir, capsys):
    with pytest.raises(ValueError, match="mode"):
        dedup.dedup(corpus_dir, None, mode="fuzzy")
    with pytest.raises(ValueError, match="workers"):
        dedup.dedup(corpus_dir, None, workers=0)
    with pytest.raises(SystemExit) as e:
        dedup.main(["--help"])
    assert e.value.code == 0 and "--mode" in capsys.readouterr().out


def test_datasketch_comparison(corpus_dir):
    pytest.importorskip("datasketch")
    from data.dedup_compare import compare_datasketch

    r = compare_datasketch(corpus_dir, max_docs=250, sample_docs=100)
    assert r["docs"] == 250
    for name in ("ours", "datasketch"):
        assert (
            r[name]["precision"] >= 0.9 and r[name]["recall"] >= 0.8 and r[name]["docs_per_s"] > 0
        )


def test_memory_bounded_flushes_give_same_result(corpus_dir, dedup_runs, monkeypatch):
    monkeypatch.setattr(dedup, "_SHINGLES_PER_FLUSH", 5000)
    result = dedup.dedup(corpus_dir, None, mode="global", workers=1)
    assert result.table == dedup_runs["global"][0].table
