import json

import pytest
import zstandard

from data import slimpajama
from data.slimpajama import SOURCES, CorpusError, SkipReport, iter_documents, iter_file


def _row(text="hello world", source="RedPajamaC4"):
    return json.dumps({"text": text, "meta": {"redpajama_set_name": source}})


def _write(path, lines, compress=True, frames=1):
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = "".join(line + "\n" for line in lines).encode()
    if not compress:
        path.write_bytes(payload)
        return path
    cctx = zstandard.ZstdCompressor()
    step = max(1, len(payload) // frames)
    path.write_bytes(
        b"".join(cctx.compress(payload[i : i + step]) for i in range(0, len(payload), step))
    )
    return path


def test_source_names_exact():
    assert SOURCES == (
        "RedPajamaCommonCrawl",
        "RedPajamaC4",
        "RedPajamaGithub",
        "RedPajamaBook",
        "RedPajamaArXiv",
        "RedPajamaWikipedia",
        "RedPajamaStackExchange",
    )


@pytest.mark.parametrize("layout", ["slimpajama", "per-source", "plain"])
@pytest.mark.parametrize("frames", [1, 3])
def test_layouts(tmp_path, layout, frames):
    texts = {s: [f"{s} doc {i} é ✓" for i in range(4)] for s in SOURCES}
    if layout == "slimpajama":
        rows = [_row(t, s) for s in SOURCES for t in texts[s]]
        _write(tmp_path / "train/chunk1/example_train_0.jsonl.zst", rows[:10], frames=frames)
        _write(tmp_path / "train/chunk2/example_train_0.jsonl.zst", rows[10:], frames=frames)
    elif layout == "per-source":
        for s in SOURCES:  # rows without meta: the folder names the source
            lines = [json.dumps({"text": t}) for t in texts[s]]
            _write(tmp_path / "train" / s / "part0.jsonl.zst", lines, frames=frames)
    else:
        rows = [_row(t, s) for s in SOURCES for t in texts[s]]
        _write(tmp_path / "a.jsonl", rows, compress=False)
    got = {}
    for doc in iter_documents(tmp_path, "train"):
        got.setdefault(doc.source, []).append(doc.text)
    assert {s: sorted(v) for s, v in got.items()} == {s: sorted(v) for s, v in texts.items()}


def _good_and_bad(tmp_path, bad_line):
    return _write(tmp_path / "train/chunk1/f.jsonl.zst", [_row("a"), bad_line, _row("b")])


BAD_LINES = {
    "bad_json": "{not json",
    "missing_text": json.dumps({"meta": {"redpajama_set_name": "RedPajamaC4"}}),
    "unknown_source": _row(source="RedPajamaReddit"),
    "missing_source": json.dumps({"text": "x"}),
}


@pytest.mark.parametrize(
    "reason,line",
    list(BAD_LINES.items())
    + [
        ("bad_json", "[1, 2]"),
        ("bad_json", ""),
        ("missing_text", json.dumps({"text": 3, "meta": {"redpajama_set_name": "RedPajamaC4"}})),
    ],
)
def test_bad_line_raises_with_file_and_line(tmp_path, reason, line):
    path = _good_and_bad(tmp_path, line)
    with pytest.raises(CorpusError) as e:
        list(iter_file(path))
    assert e.value.reason == reason and e.value.line == 2
    assert f"{path}:2" in str(e.value)
    report = SkipReport()
    docs = list(iter_file(path, on_error="skip", report=report))
    assert [d.text for d in docs] == ["a", "b"] and [d.line for d in docs] == [1, 3]
    assert dict(report.counts) == {reason: 1}
    assert reason in report.summary()


def test_bad_utf8(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(_row("a").encode() + b"\n" + b'{"text": "\xff\xfe"}\n')
    with pytest.raises(CorpusError, match="bad_utf8"):
        list(iter_file(path))


def test_source_mismatch(tmp_path):
    path = _write(tmp_path / "train/RedPajamaGithub/p.jsonl.zst", [_row(source="RedPajamaC4")])
    with pytest.raises(CorpusError, match="source_mismatch"):
        list(iter_file(path))


@pytest.mark.parametrize("kind", ["truncated_zstd", "corrupt_zstd", "corrupt_header"])
def test_bad_zstd(tmp_path, kind):
    path = _write(tmp_path / "f.jsonl.zst", [_row(f"doc {i} " * 50) for i in range(200)])
    data = bytearray(path.read_bytes())
    if kind == "truncated_zstd":
        data = data[: len(data) // 2]
    elif kind == "corrupt_zstd":
        data[len(data) // 2 : len(data) // 2 + 16] = b"\x00" * 16
    else:
        data[:4] = b"nope"
    path.write_bytes(bytes(data))
    with pytest.raises(CorpusError) as e:
        list(iter_file(path))
    assert e.value.reason == ("truncated_zstd" if kind == "truncated_zstd" else "corrupt_zstd")
    assert str(path) in str(e.value) and e.value.line is not None
    report = SkipReport()
    list(iter_file(path, on_error="skip", report=report))
    assert report.total == 1


@pytest.mark.parametrize("compress", [True, False])
def test_empty_file(tmp_path, compress):
    path = tmp_path / ("e.jsonl.zst" if compress else "e.jsonl")
    path.write_bytes(zstandard.ZstdCompressor().compress(b"") if compress else b"")
    with pytest.raises(CorpusError, match="empty_file"):
        list(iter_file(path))
    report = SkipReport()
    assert list(iter_file(path, on_error="skip", report=report)) == []
    assert dict(report.counts) == {"empty_file": 1}


def test_skip_needs_report_and_valid_mode(tmp_path):
    path = _write(tmp_path / "f.jsonl", [_row()], compress=False)
    with pytest.raises(ValueError, match="report"):
        list(iter_file(path, on_error="skip"))
    with pytest.raises(ValueError, match="on_error"):
        list(iter_file(path, on_error="ignore"))
    with pytest.raises(ValueError, match="split"):
        slimpajama.list_files(tmp_path, "dev")
    with pytest.raises(FileNotFoundError):
        list(iter_documents(tmp_path / "missing", "train"))
    _write(tmp_path / "train/a.jsonl", [_row()], compress=False)
    with pytest.raises(FileNotFoundError, match="no 'test'"):
        slimpajama.list_files(tmp_path, "test")
