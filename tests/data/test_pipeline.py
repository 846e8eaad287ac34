import json

import numpy as np
import pytest
from array_record.python.array_record_data_source import ArrayRecordDataSource

from data.mixtures import get_mixture
from data.pipeline import BATCH_KEYS, IGNORE_TARGET, PipelineConfig, make_pipeline
from data.prepare import load_manifest
from data.slimpajama import SOURCES


def _take(it, n):
    return [next(it) for _ in range(n)]


def _equal(a, b):
    return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in BATCH_KEYS)


@pytest.mark.parametrize("seq_len,batch_size", [(64, 3), (257, 2)])
def test_shapes_and_packing(prepared_dir, seq_len, batch_size):
    m = load_manifest(prepared_dir)
    docs = set()
    for split_src in m.splits["train"].values():
        src = ArrayRecordDataSource([str(prepared_dir / s) for s in split_src["shards"]])
        docs.update(tuple(np.frombuffer(src[i], dtype=np.uint16).tolist()) for i in range(len(src)))
    it = make_pipeline(prepared_dir, "SlimPajama", seq_len, batch_size, seed=1)
    batches = _take(it, 6)
    for b in batches:
        assert sorted(b) == sorted(BATCH_KEYS)
        assert all(v.dtype == np.int32 and v.shape == (batch_size, seq_len) for v in b.values())
    stream = np.concatenate([b["tokens"].reshape(-1) for b in batches])
    targets = np.concatenate([b["targets"].reshape(-1) for b in batches])
    ok = targets != IGNORE_TARGET
    np.testing.assert_array_equal(targets[:-1][ok[:-1]], stream[1:][ok[:-1]])  # next-token targets
    assert np.all(stream[~ok] == m.eos_id)  # only EOS tokens carry no target
    for b in batches:
        for r in range(batch_size):
            seg, pos, tok, src = (
                b[k][r] for k in ("segment_ids", "positions", "tokens", "source_ids")
            )
            assert seg[0] == 1 and np.all(np.diff(seg) >= 0) and np.all(np.diff(seg) <= 1)
            starts = np.flatnonzero(np.r_[True, np.diff(seg) == 1])
            ends = np.r_[starts[1:], seq_len]
            for s, e in zip(starts, ends, strict=True):
                np.testing.assert_array_equal(pos[s:e], np.arange(e - s))
                assert len(set(src[s:e].tolist())) == 1
                body = tok[s:e]
                if e < seq_len:  # a segment ended inside the row: it ends with EOS ...
                    assert body[-1] == m.eos_id and b["targets"][r, e - 1] == IGNORE_TARGET
                if s > 0 and e < seq_len:  # ... and a whole one is exactly a stored document
                    assert tuple(body[:-1].tolist()) in docs


def test_token_proportions_chi_square(prepared_dir):
    """Token shares over 100k tokens: chi-square on document units, and the mixer's hard bound."""
    mixture = get_mixture(
        "RedPajamaCommonCrawl=0.5,RedPajamaC4=0.3,RedPajamaGithub=0.15,RedPajamaBook=0.05"
    )
    m = load_manifest(prepared_dir)
    it = make_pipeline(prepared_dir, mixture, 512, 8, seed=3)
    counts = np.zeros(len(SOURCES))
    while counts.sum() < 100_000:
        counts += np.bincount(next(it)["source_ids"].reshape(-1), minlength=len(SOURCES))
    total = counts.sum()
    p = np.array([mixture.proportions.get(s, 0.0) for s in SOURCES])
    assert np.all(counts[p == 0] == 0)
    nz = p > 0
    # Tokens arrive in whole documents, so the independent draws are documents: count in mean-doc
    # units.
    doc_len = np.array(
        [m.splits["train"][s]["tokens"] / m.splits["train"][s]["docs"] for s in SOURCES]
    )
    observed, expected = counts[nz] / doc_len[nz], p[nz] * total / doc_len[nz]
    chi2 = float(np.sum((observed - expected) ** 2 / expected))
    assert chi2 < 16.27, (chi2, counts / total)  # chi-square, 3 degrees of freedom, p = 0.001
    # Smooth weighted round robin: every source is within ~one (long) document of its share.
    assert np.all(np.abs(counts - p * total)[nz] < 3 * doc_len.max()), (counts / total, p)


def test_deterministic_and_seed_dependent(prepared_dir):
    a = _take(make_pipeline(prepared_dir, "DC-6", 128, 4, seed=5), 5)
    b = _take(make_pipeline(prepared_dir, "DC-6", 128, 4, seed=5), 5)
    c = _take(make_pipeline(prepared_dir, "DC-6", 128, 4, seed=6), 5)
    assert _equal(a, b) and not _equal(a, c)


@pytest.mark.parametrize("n_before", [0, 1, 7])
def test_restore_continues_exactly(prepared_dir, n_before):
    it = make_pipeline(prepared_dir, "SlimPajama", 200, 3, seed=2)
    _take(it, n_before)
    state = json.loads(json.dumps(it.get_state()))
    expected = _take(it, 6)
    fresh = make_pipeline(prepared_dir, "SlimPajama", 200, 3, seed=2)
    fresh.set_state(state)
    assert _equal(_take(fresh, 6), expected)


def test_restore_with_changed_weights(prepared_dir):
    it = make_pipeline(prepared_dir, "DC-3", 128, 2, seed=0)
    _take(it, 3)
    state = it.get_state()
    other = make_pipeline(prepared_dir, "DC-6", 128, 2, seed=0)  # more sources, other weights
    other.set_state(state)
    first = next(other)
    assert first["tokens"].shape == (2, 128)


def test_process_shards_are_disjoint(prepared_dir):
    seen = []
    for p in range(2):
        it = make_pipeline(prepared_dir, "DC-1", 512, 1, seed=0, process_index=p, process_count=2)
        seen.append({tuple(r) for b in _take(it, 10) for r in b["tokens"][:, :32].tolist()})
    assert not seen[0] & seen[1]


def test_orbax_checkpoint_roundtrip(prepared_dir, tmp_path):
    grain = pytest.importorskip("grain")
    ocp = pytest.importorskip("orbax.checkpoint")
    it = make_pipeline(prepared_dir, "DC-2", 96, 2, seed=4)
    _take(it, 3)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(3, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
        expected = _take(it, 4)
        fresh = make_pipeline(prepared_dir, "DC-2", 96, 2, seed=4)
        mngr.restore(
            3, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(fresh))
        )
    assert _equal(_take(fresh, 4), expected)


@pytest.mark.slow
def test_multiprocess_prefetch_deterministic_and_restorable(prepared_dir):
    it = make_pipeline(prepared_dir, "DC-6", 128, 2, seed=9, worker_count=2)
    _take(it, 3)
    state = it.get_state()
    expected = _take(it, 4)
    it.close()
    fresh = make_pipeline(prepared_dir, "DC-6", 128, 2, seed=9, worker_count=2)
    fresh.set_state(state)
    got = _take(fresh, 4)
    fresh.close()
    assert _equal(got, expected)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"seq_len": 0}, "seq_len"),
        ({"batch_size": -1}, "batch_size"),
        ({"seed": -1}, "seed"),
        ({"process_index": 2, "process_count": 2}, "process_index"),
        ({"split": "dev"}, "split"),
        ({"worker_count": 1.5}, "worker_count"),
    ],
)
def test_bad_config(kwargs, match):
    args = (
        dict(prepared_dir="x", mixture=get_mixture("DC-1"), seq_len=8, batch_size=1, seed=0)
        | kwargs
    )
    with pytest.raises(ValueError, match=match):
        PipelineConfig(**args)


def test_missing_source_in_prepared_data(prepared_dir, tmp_path):
    manifest = json.loads((prepared_dir / "manifest.json").read_text())
    del manifest["splits"]["validation"]["RedPajamaBook"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="RedPajamaBook.*no tokens"):
        make_pipeline(tmp_path, "RedPajamaBook=1,RedPajamaC4=1", 8, 1, seed=0, split="validation")
    with pytest.raises(FileNotFoundError):
        make_pipeline(tmp_path / "nope", "DC-1", 8, 1, seed=0)
