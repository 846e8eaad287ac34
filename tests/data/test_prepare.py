import json
import shutil

import numpy as np
import pytest
from array_record.python.array_record_data_source import ArrayRecordDataSource

from data.prepare import load_manifest, main, prepare
from data.slimpajama import SOURCES, SPLITS, iter_documents
from data.tokenizer import eos_id, load_tokenizer, train_bpe


def _shard_bytes(out):
    return {
        p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.array_record"))
    }


def test_manifest_matches_corpus_and_roundtrips(corpus_dir, prepared_dir):
    m = load_manifest(prepared_dir)
    tok = load_tokenizer(prepared_dir / m.tokenizer)
    assert m.eos_id == eos_id(tok) and m.dtype == "uint16" and m.vocab_size <= 1024
    for split in SPLITS:
        docs = {}
        for d in iter_documents(corpus_dir, split):
            docs.setdefault(d.source, []).append(d.text)
        assert {s: v["docs"] for s, v in m.splits[split].items()} == {
            s: len(v) for s, v in docs.items()
        }
        assert set(m.splits[split]) == set(SOURCES)
    shards = m.splits["train"]["RedPajamaGithub"]["shards"]
    src = ArrayRecordDataSource([str(prepared_dir / s) for s in shards])
    assert len(src) == m.splits["train"]["RedPajamaGithub"]["docs"]
    decoded = {tok.decode(np.frombuffer(src[i], dtype=np.uint16).tolist()) for i in range(len(src))}
    originals = {
        d.text for d in iter_documents(corpus_dir, "train") if d.source == "RedPajamaGithub"
    }
    assert decoded == originals  # byte-level BPE is lossless
    total = sum(len(np.frombuffer(src[i], dtype=np.uint16)) for i in range(len(src)))
    assert total == m.splits["train"]["RedPajamaGithub"]["tokens"]


def test_resumes_after_interruption(corpus_dir, prepared_dir, tmp_path):
    out = tmp_path / "p"
    shutil.copytree(prepared_dir, out)
    reference = _shard_bytes(out)
    # Simulate a crash in the middle of one file: its marker is missing, one of its shards is half
    # written (a .tmp), another was renamed but holds garbage, and the manifest was not rewritten.
    done = sorted((out / "train/_done").glob("*.json"))[0]
    marker = json.loads(done.read_text())
    done.unlink()
    (out / "manifest.json").unlink()
    shard_a, shard_b = [out / s["shard"] for s in list(marker["sources"].values())[:2]]
    shard_a.with_name(shard_a.name + ".tmp").write_bytes(b"half")
    shard_b.write_bytes(b"garbage")
    # A finished marker whose shard vanished is not trusted either.
    other = json.loads(sorted((out / "test/_done").glob("*.json"))[0].read_text())
    (out / next(iter(other["sources"].values()))["shard"]).unlink()
    m, stats = prepare(corpus_dir, out, vocab_size=1024, workers=2, progress=False)
    assert stats.tasks_run == 2 and stats.tasks_skipped == len(list(out.rglob("_done/*.json"))) - 2
    assert _shard_bytes(out) == reference and not list(out.rglob("*.tmp"))
    assert m == load_manifest(prepared_dir)
    m2, stats2 = prepare(corpus_dir, out, vocab_size=1024, workers=1, progress=False)
    assert stats2.tasks_run == 0 and m2 == m


def test_given_tokenizer_json_and_skip_mode(corpus_dir, tmp_path):
    tok_path = tmp_path / "tok.json"
    texts = [d.text for d in iter_documents(corpus_dir, "validation")]
    train_bpe(texts, 400, tok_path)
    bad_corpus = tmp_path / "c"
    shutil.copytree(corpus_dir / "validation", bad_corpus / "validation")
    (bad_corpus / "validation/extra.jsonl").write_text(
        '{"text": "x", "meta": {"redpajama_set_name": "Nope"}}\n'
    )
    with pytest.raises(ValueError, match="extra.jsonl:1: unknown_source"):
        prepare(
            bad_corpus,
            tmp_path / "o1",
            tokenizer=tok_path,
            splits=("validation",),
            workers=1,
            progress=False,
        )
    m, _ = prepare(
        bad_corpus,
        tmp_path / "o2",
        tokenizer=tok_path,
        splits=("validation",),
        workers=1,
        progress=False,
        on_error="skip",
    )
    assert (
        m.vocab_size == 400
        and m.skips == {"unknown_source": 1}
        and list(m.splits) == ["validation"]
    )


def test_bad_arguments(corpus_dir, tmp_path):
    with pytest.raises(FileNotFoundError):
        prepare(tmp_path / "none", tmp_path / "o")
    with pytest.raises(ValueError, match="workers"):
        prepare(corpus_dir, tmp_path / "o", workers=0)
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe(["abc"], 10, tmp_path / "t.json")
    with pytest.raises(FileNotFoundError, match="prepare"):
        load_manifest(tmp_path)


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "--tokenizer" in capsys.readouterr().out


def test_resumes_after_crash_inside_a_shard_write(corpus_dir, prepared_dir, tmp_path, monkeypatch):
    import data.prepare as prep

    calls = {"n": 0}
    real = prep._write_shard

    def crashing(path, records):
        calls["n"] += 1
        if calls["n"] == 9:  # crash after the .tmp file of the 9th shard is written, before rename
            writer = prep.ArrayRecordWriter(str(path) + ".tmp", prep._WRITER_OPTIONS)
            writer.write(records[0])
            writer.close()
            raise KeyboardInterrupt("simulated kill")
        real(path, records)

    monkeypatch.setattr(prep, "_write_shard", crashing)
    out = tmp_path / "p"
    out.mkdir()
    (out / "tokenizer.json").write_bytes((prepared_dir / "tokenizer.json").read_bytes())
    with pytest.raises(KeyboardInterrupt):
        prepare(corpus_dir, out, workers=1, progress=False)
    assert not (out / "manifest.json").exists() and list(out.rglob("*.tmp"))
    monkeypatch.setattr(prep, "_write_shard", real)
    m, stats = prepare(corpus_dir, out, workers=1, progress=False)
    assert stats.tasks_skipped == 1 and stats.tasks_run > 1  # the first file had finished
    assert _shard_bytes(out) == _shard_bytes(prepared_dir) and m == load_manifest(prepared_dir)
    assert not list(out.rglob("*.tmp"))


def test_flat_jsonl_corpus_is_the_train_split(tmp_path):
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "eps"]
    rows = [
        {"text": " ".join(rng.choice(words, 30)), "meta": {"redpajama_set_name": src}}
        for src in ("RedPajamaC4", "RedPajamaArXiv")
        for _ in range(5)
    ]
    (tmp_path / "c").mkdir()
    (tmp_path / "c/all.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    m, stats = prepare(tmp_path / "c", tmp_path / "o", vocab_size=300, workers=1, progress=False)
    assert list(m.splits) == ["train"] and stats.tasks_run == 1
    assert {s: v["docs"] for s, v in m.splits["train"].items()} == {
        "RedPajamaC4": 5,
        "RedPajamaArXiv": 5,
    }


def test_large_vocab_is_stored_as_uint32(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    from data.pipeline import make_pipeline

    vocab = {"<|endoftext|>": 0, "[UNK]": 1} | {f"w{i}": i for i in range(2, 70_000)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(tmp_path / "big.json"))
    ids = np.random.default_rng(1).integers(60_000, 70_000, size=(4, 50))
    (tmp_path / "c/train").mkdir(parents=True)
    rows = [
        {"text": " ".join(f"w{i}" for i in r), "meta": {"redpajama_set_name": "RedPajamaBook"}}
        for r in ids
    ]
    (tmp_path / "c/train/a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    m, _ = prepare(
        tmp_path / "c", tmp_path / "o", tokenizer=tmp_path / "big.json", workers=1, progress=False
    )
    assert m.dtype == "uint32" and m.vocab_size == 70_000 and m.eos_id == 0
    batch = next(make_pipeline(tmp_path / "o", "RedPajamaBook=1", 51, 4, seed=0))
    # Documents of 50 ids + EOS fill rows of 51 exactly: every row is one whole document.
    assert {tuple(r[:50]) for r in batch["tokens"].tolist()} <= {tuple(r) for r in ids.tolist()}
    assert batch["tokens"].max() >= 65_536 and set(batch["tokens"][:, 50].tolist()) == {0}


def test_files_per_task_groups_shards(corpus_dir, prepared_dir, tmp_path):
    shutil.copy(prepared_dir / "tokenizer.json", tmp_path / "tok.json")
    m, stats = prepare(
        corpus_dir,
        tmp_path / "o",
        tokenizer=tmp_path / "tok.json",
        workers=1,
        progress=False,
        files_per_task=3,
    )
    ref = load_manifest(prepared_dir)
    assert stats.tasks_run == 2 + 1 + 1  # train: 4 files -> 2 tasks; validation, test: 2 -> 1
    for split in SPLITS:
        for source, v in m.splits[split].items():
            assert (v["docs"], v["tokens"]) == (
                ref.splits[split][source]["docs"],
                ref.splits[split][source]["tokens"],
            )
            assert (
                len(v["shards"]) < len(ref.splits[split][source]["shards"]) or len(v["shards"]) == 1
            )
    with pytest.raises(ValueError, match="files_per_task"):
        prepare(corpus_dir, tmp_path / "o", files_per_task=0)
