"""Streaming reader for SlimPajama-format corpora.

Accepted layouts under a corpus root (each row is ``{"text": str, "meta": {"redpajama_set_name":
str}}``):

* SlimPajama-627B: ``<root>/<split>/chunkK/example_<split>_N.jsonl.zst`` (sources mixed inside a
  file);
* per source: ``<root>/<split>/RedPajama<Source>/*.jsonl[.zst]`` (the directory name gives the
  source when a row has no ``meta.redpajama_set_name``; when it has one they must agree);
* plain ``.jsonl`` files anywhere below ``<root>/<split>`` (or below ``<root>`` when no split folder
  exists).

Bad input (corrupt or truncated zstd, invalid UTF-8, a line that is not a JSON object,
missing/non-string ``text``, a missing or unknown source name, an empty file) raises
:class:`CorpusError` naming the file and line. With ``on_error="skip"`` the bad item is skipped and
counted by reason in a :class:`SkipReport`.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import zstandard

SOURCES: tuple[str, ...] = (
    "RedPajamaCommonCrawl",
    "RedPajamaC4",
    "RedPajamaGithub",
    "RedPajamaBook",
    "RedPajamaArXiv",
    "RedPajamaWikipedia",
    "RedPajamaStackExchange",
)
SPLITS: tuple[str, ...] = ("train", "validation", "test")
SKIP_REASONS: tuple[str, ...] = (
    "corrupt_zstd",
    "truncated_zstd",
    "bad_utf8",
    "bad_json",
    "missing_text",
    "missing_source",
    "unknown_source",
    "source_mismatch",
    "empty_file",
)
_READ_BYTES = 1 << 20


class CorpusError(ValueError):
    """A bad corpus file or line; ``reason`` is one of :data:`SKIP_REASONS`."""

    def __init__(self, reason: str, path: Path | str, line: int | None, detail: str):
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {reason}: {detail}")
        self.reason = reason
        self.path = str(path)
        self.line = line


@dataclasses.dataclass(frozen=True)
class Document:
    """One corpus row. ``line`` is 1-based within ``path``."""

    text: str
    source: str
    path: str
    line: int
    meta: dict


@dataclasses.dataclass
class SkipReport:
    """Counts of skipped items by reason (filled by readers running with ``on_error="skip"``)."""

    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: list[str] = dataclasses.field(default_factory=list)

    def add(self, err: CorpusError) -> None:
        self.counts[err.reason] += 1
        if len(self.examples) < 20:
            self.examples.append(str(err))

    def merge(self, other: SkipReport) -> None:
        self.counts.update(other.counts)
        self.examples.extend(other.examples[: max(0, 20 - len(self.examples))])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.total:
            return "skipped: none"
        parts = ", ".join(f"{r}={self.counts[r]}" for r in sorted(self.counts))
        return f"skipped {self.total}: {parts}"


def _check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def split_dir(root: Path | str, split: str) -> Path:
    """The folder of ``split`` under ``root`` (``root`` itself when it has no split folders)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"corpus root {root} does not exist")
    if (root / split).is_dir():
        return root / split
    if any((root / s).is_dir() for s in SPLITS):
        raise FileNotFoundError(f"corpus root {root} has split folders but no {split!r}")
    return root


def list_files(root: Path | str, split: str) -> list[Path]:
    """All ``*.jsonl`` and ``*.jsonl.zst`` files of ``split`` under ``root``, sorted."""
    base = split_dir(root, split)
    files = sorted(
        p for p in base.rglob("*") if p.is_file() and p.name.endswith((".jsonl", ".jsonl.zst"))
    )
    return files


def _zstd_chunks(path: Path) -> Iterator[bytes]:
    """Decompressed bytes of a (multi-frame) zstd file; raises on corrupt or truncated data."""
    with open(path, "rb") as f:
        dobj = zstandard.ZstdDecompressor().decompressobj()
        in_frame = False
        while raw := f.read(_READ_BYTES):
            while raw:
                try:
                    out = dobj.decompress(raw)
                except zstandard.ZstdError as e:
                    raise CorpusError("corrupt_zstd", path, None, str(e)) from e
                in_frame = True
                if out:
                    yield out
                if dobj.eof:
                    raw = dobj.unused_data
                    dobj = zstandard.ZstdDecompressor().decompressobj()
                    in_frame = False
                else:
                    raw = b""
        if in_frame:
            raise CorpusError("truncated_zstd", path, None, "file ends inside a zstd frame")


def _raw_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while raw := f.read(_READ_BYTES):
            yield raw


def _lines(path: Path) -> Iterator[bytes]:
    chunks = _zstd_chunks(path) if path.name.endswith(".zst") else _raw_chunks(path)
    pending = b""
    for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield from complete
    if pending:
        yield pending


def _dir_source(path: Path) -> str | None:
    parent = path.parent.name
    return parent if parent in SOURCES else None


def parse_line(raw: bytes, path: Path | str, line: int, dir_source: str | None = None) -> Document:
    """Decodes one JSON line into a :class:`Document`, raising :class:`CorpusError` on bad input."""
    try:
        text_line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError("bad_utf8", path, line, str(e)) from e
    try:
        row = json.loads(text_line)
    except json.JSONDecodeError as e:
        raise CorpusError("bad_json", path, line, str(e)) from e
    if not isinstance(row, dict):
        raise CorpusError(
            "bad_json", path, line, f"expected a JSON object, got {type(row).__name__}"
        )
    text = row.get("text")
    if not isinstance(text, str):
        raise CorpusError("missing_text", path, line, "row has no string field 'text'")
    meta = row.get("meta")
    meta = meta if isinstance(meta, dict) else {}
    source = meta.get("redpajama_set_name", dir_source)
    if source is None:
        raise CorpusError("missing_source", path, line, "row has no meta.redpajama_set_name")
    if source not in SOURCES:
        raise CorpusError("unknown_source", path, line, f"{source!r} is not one of {SOURCES}")
    if dir_source is not None and source != dir_source:
        raise CorpusError(
            "source_mismatch", path, line, f"row says {source!r} but lives in folder {dir_source!r}"
        )
    return Document(text=text, source=source, path=str(path), line=line, meta=meta)


def iter_file(
    path: Path | str, on_error: str = "raise", report: SkipReport | None = None
) -> Iterator[Document]:
    """Streams the documents of one ``.jsonl`` or ``.jsonl.zst`` file.

    Args:
      path: the file.
      on_error: ``"raise"`` (default) raises :class:`CorpusError` at the first bad item;
        ``"skip"`` skips it and counts it in ``report`` (a bad zstd stream ends the file).
      report: where skips are counted; required when ``on_error="skip"``.
    """
    _check_on_error(on_error)
    if on_error == "skip" and report is None:
        raise ValueError("report must be given when on_error='skip' (skips are never silent)")
    path = Path(path)
    dir_source = _dir_source(path)
    n_docs = 0
    line = 0
    try:
        for line, raw in enumerate(_lines(path), start=1):
            if not raw.strip():
                err = CorpusError("bad_json", path, line, "blank line")
            else:
                try:
                    yield parse_line(raw, path, line, dir_source)
                    n_docs += 1
                    continue
                except CorpusError as e:
                    err = e
            if on_error == "raise":
                raise err
            report.add(err)
    except CorpusError as e:
        if e.line is None:  # stream-level error: name the line it happened after
            e = CorpusError(e.reason, path, line + 1, str(e).split(": ", 2)[-1])
        if on_error == "raise":
            raise e from None
        report.add(e)
        return
    if n_docs == 0 and line == 0:
        err = CorpusError("empty_file", path, None, "file holds no documents")
        if on_error == "raise":
            raise err
        report.add(err)


def iter_documents(
    root: Path | str, split: str, on_error: str = "raise", report: SkipReport | None = None
) -> Iterator[Document]:
    """Streams every document of ``split`` under corpus ``root`` (files in sorted order)."""
    files = list_files(root, split)
    if not files:
        raise FileNotFoundError(f"no .jsonl or .jsonl.zst files for split {split!r} under {root}")
    for path in files:
        yield from iter_file(path, on_error=on_error, report=report)
