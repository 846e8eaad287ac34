import hashlib
import json

import pytest

from data.slimpajama import SOURCES, SPLITS, iter_documents
from data.synthetic import SyntheticConfig, generate, main


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_deterministic_by_seed(tmp_path):
    a = generate(tmp_path / "a", seed=3, train_docs=100)
    b = generate(tmp_path / "b", seed=3, train_docs=100)
    c = generate(tmp_path / "c", seed=4, train_docs=100)
    assert _digest(a) == _digest(b) != _digest(c)


def test_layout_sources_styles_and_duplicates(corpus_dir):
    assert sorted(p.name for p in (corpus_dir / "train").iterdir()) == ["chunk1", "chunk2"]
    assert (corpus_dir / "train/chunk1/example_train_0.jsonl.zst").is_file()
    texts = {}
    for split in SPLITS:
        for doc in iter_documents(corpus_dir, split):
            texts.setdefault((split, doc.source), []).append(doc.text)
    assert {s for (_, s) in texts} == set(SOURCES)
    assert all((split, s) in texts for split in SPLITS for s in SOURCES)
    joined = {s: "\n".join(texts["train", s]) for s in SOURCES}
    assert "def " in joined["RedPajamaGithub"] and "\\section{" in joined["RedPajamaArXiv"]
    assert (
        "Q: " in joined["RedPajamaStackExchange"]
        and "== References ==" in joined["RedPajamaWikipedia"]
    )
    assert "CHAPTER" in joined["RedPajamaBook"] and "Click here" in joined["RedPajamaCommonCrawl"]
    planted = json.loads((corpus_dir / "planted_duplicates.json").read_text())
    by_id = {d.meta["synthetic_id"]: d.text for d in iter_documents(corpus_dir, "train")}
    for kind in ("exact_within", "near_within", "exact_cross", "near_cross"):
        assert planted[kind], kind
        for a, b in planted[kind]:
            if kind.startswith("exact"):
                assert by_id[a] == by_id[b]
            else:
                assert by_id[a] != by_id[b] and len(by_id[a]) == pytest.approx(
                    len(by_id[b]), rel=0.05
                )
            assert (a.split("/")[1] == b.split("/")[1]) == kind.endswith("within")


def test_per_source_layout(tmp_path):
    out = generate(tmp_path, seed=0, train_docs=60, layout="per-source")
    for s in SOURCES:
        assert list((out / "train" / s).glob("*.jsonl.zst"))


@pytest.mark.parametrize(
    "bad", [{"train_docs": 10}, {"layout": "flat"}, {"dup_fraction": 0.9}, {"files_per_chunk": 0}]
)
def test_bad_config(bad):
    with pytest.raises(ValueError):
        SyntheticConfig(**bad)


def test_cli(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "--seed" in capsys.readouterr().out
    main(["--out", str(tmp_path), "--seed", "1", "--train-docs", "60"])
    assert (tmp_path / "test/chunk1/example_test_0.jsonl.zst").is_file()
