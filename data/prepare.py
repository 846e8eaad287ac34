"""Tokenize a SlimPajama-format corpus into per-source, per-split ArrayRecord token shards.

``python -m data.prepare --corpus DIR --out DIR [--tokenizer tokenizer.json | --vocab-size N]``

Output layout (``out_dir``)::

    tokenizer.json                            the tokenizer used (copied, or trained here)
    <split>/<source>/<file_key>.array_record  a record per document: token ids (manifest dtype)
    <split>/_done/<file_key>.json             marker of a finished input file (written last)
    manifest.json                             docs/tokens/shards per split and source

One task per input file (or per ``files_per_task`` consecutive files), run in parallel by
``workers`` processes. Resumable: a task is finished iff its marker exists and names the same
tokenizer; shards are written to ``*.tmp`` and renamed before the marker is written, so a
half-written shard is never taken as finished and is simply rewritten on the next run.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter
from tqdm import tqdm

from data import _mp, slimpajama
from data.tokenizer import eos_id, load_tokenizer, train_bpe

MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
_WRITER_OPTIONS = "group_size:1,uncompressed"
_ENCODE_BATCH = 256


@dataclasses.dataclass(frozen=True)
class Manifest:
    """What ``prepare`` wrote.

    ``splits[split][source]`` = ``{"docs": int, "tokens": int, "shards": [paths relative to the
    prepared directory]}``; token ids are stored little-endian as ``dtype``.
    """

    vocab_size: int
    eos_id: int
    dtype: str  # numpy dtype of the stored token ids: "uint16" or "uint32"
    tokenizer: str  # file name of the tokenizer inside the prepared directory
    tokenizer_sha256: str
    splits: dict
    skips: dict  # reason -> count over all splits (only with on_error="skip")

    def __post_init__(self):
        if self.dtype not in ("uint16", "uint32"):
            raise ValueError(f"dtype must be 'uint16' or 'uint32', got {self.dtype!r}")
        if self.vocab_size <= 0 or not 0 <= self.eos_id < self.vocab_size:
            raise ValueError(f"bad vocab_size/eos_id: {self.vocab_size}/{self.eos_id}")

    def tokens(self, split: str) -> dict[str, int]:
        """Tokens per source (sources with no documents are absent)."""
        return {s: v["tokens"] for s, v in self.splits.get(split, {}).items() if v["docs"] > 0}


def load_manifest(prepared_dir: Path | str) -> Manifest:
    """Reads ``manifest.json`` of a prepared directory."""
    path = Path(prepared_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `python -m data.prepare` first")
    return Manifest(**json.loads(path.read_text()))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _file_key(corpus_split_dir: Path, path: Path) -> str:
    rel = path.relative_to(corpus_split_dir).as_posix()
    return rel.removesuffix(".zst").removesuffix(".jsonl").replace("/", "__")


@dataclasses.dataclass(frozen=True)
class _Task:
    split: str
    paths: tuple[str, ...]  # input files, tokenized together into one shard per source
    key: str


_STATE: dict = {}


def _init_worker(
    tokenizer_path: str, out_dir: str, dtype: str, on_error: str, sha: str, parallel: bool = True
) -> None:
    if not parallel:  # one process per core already: no Rust thread pool on top
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _STATE.update(
        tok=load_tokenizer(tokenizer_path),
        out=Path(out_dir),
        dtype=np.dtype(dtype),
        on_error=on_error,
        sha=sha,
    )


def _write_shard(path: Path, records: list[bytes]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    writer = ArrayRecordWriter(str(tmp), _WRITER_OPTIONS)
    for rec in records:
        writer.write(rec)
    writer.close()
    os.replace(tmp, path)


def _run_task(task: _Task) -> dict:
    """Tokenizes the task's input files into up to 7 shards (one per source), then its marker."""
    tok, out, dtype = _STATE["tok"], _STATE["out"], _STATE["dtype"]
    report = slimpajama.SkipReport()
    texts: dict[str, list[str]] = {}
    for path in task.paths:
        for doc in slimpajama.iter_file(path, on_error=_STATE["on_error"], report=report):
            texts.setdefault(doc.source, []).append(doc.text)
    sources = {}
    for source, docs in sorted(texts.items()):
        records, n_tokens, n_empty = [], 0, 0
        for start in range(0, len(docs), _ENCODE_BATCH):
            for enc in tok.encode_batch(
                docs[start : start + _ENCODE_BATCH], add_special_tokens=False
            ):
                if not enc.ids:
                    n_empty += 1
                    continue
                records.append(np.asarray(enc.ids, dtype=dtype).tobytes())
                n_tokens += len(enc.ids)
        rel = f"{task.split}/{source}/{task.key}.array_record"
        (out / task.split / source).mkdir(parents=True, exist_ok=True)
        _write_shard(out / rel, records)
        sources[source] = {
            "docs": len(records),
            "tokens": n_tokens,
            "empty_docs": n_empty,
            "shard": rel,
        }
    marker = {
        "files": list(task.paths),
        "tokenizer_sha256": _STATE["sha"],
        "sources": sources,
        "skips": dict(report.counts),
    }
    done = out / task.split / "_done" / f"{task.key}.json"
    done.parent.mkdir(parents=True, exist_ok=True)
    tmp = done.with_name(done.name + ".tmp")
    tmp.write_text(json.dumps(marker, indent=1))
    os.replace(tmp, done)
    return marker


def _is_done(out: Path, task: _Task, sha: str) -> bool:
    done = out / task.split / "_done" / f"{task.key}.json"
    if not done.is_file():
        return False
    marker = json.loads(done.read_text())
    return marker.get("tokenizer_sha256") == sha and all(
        (out / s["shard"]).is_file() for s in marker["sources"].values()
    )


def _training_texts(corpus_dir: Path, max_bytes: int, on_error: str):
    """Train-split texts for the BPE (its skips are counted again, per file, by the tasks)."""
    seen = 0
    for doc in slimpajama.iter_documents(
        corpus_dir, "train", on_error=on_error, report=slimpajama.SkipReport()
    ):
        yield doc.text
        seen += len(doc.text)
        if seen >= max_bytes:
            return


@dataclasses.dataclass(frozen=True)
class PrepareStats:
    """Work done by one ``prepare`` call."""

    tasks_run: int
    tasks_skipped: int
    tokens: int  # tokens written by this call
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


def prepare(
    corpus_dir: Path | str,
    out_dir: Path | str,
    tokenizer: Path | str | None = None,
    vocab_size: int = 4096,
    splits: tuple[str, ...] = slimpajama.SPLITS,
    workers: int | None = None,
    on_error: str = "raise",
    progress: bool = True,
    bpe_sample_bytes: int = 64 << 20,
    files_per_task: int = 1,
) -> tuple[Manifest, PrepareStats]:
    """Tokenizes ``corpus_dir`` into ``out_dir`` (resumable); returns (manifest, this call's stats).

    Args:
      corpus_dir: a SlimPajama-format corpus (see :mod:`data.slimpajama`).
      out_dir: the prepared directory.
      tokenizer: a ``tokenizer.json``; ``None`` trains a byte-level BPE of ``vocab_size`` on (up to
        ``bpe_sample_bytes`` of) the train split, or reuses the one already in ``out_dir``.
      splits: splits to prepare (those missing are skipped; a corpus without split folders is
        all "train").
      workers: processes; ``None`` = ``os.cpu_count()``; 1 = in this process.
      on_error: ``"raise"`` or ``"skip"`` (see :func:`data.slimpajama.iter_file`); skips land in
        the manifest.
      files_per_task: consecutive input files tokenized into one shard per source (the unit of
        work and of resumption). For the full SlimPajama-627B (59k files) use e.g. 64, so the
        pipeline opens thousands of shards rather than ~400k.
    """
    corpus_dir, out = Path(corpus_dir), Path(out_dir)
    if not corpus_dir.is_dir():
        raise FileNotFoundError(f"corpus_dir {corpus_dir} is not a directory")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if files_per_task < 1:
        raise ValueError(f"files_per_task must be >= 1, got {files_per_task}")
    out.mkdir(parents=True, exist_ok=True)
    tok_path = out / TOKENIZER
    if tokenizer is not None:
        src = Path(tokenizer)
        if not tok_path.is_file() or _sha256(src) != _sha256(tok_path):
            shutil.copyfile(src, tok_path.with_name(TOKENIZER + ".tmp"))
            os.replace(tok_path.with_name(TOKENIZER + ".tmp"), tok_path)
    elif not tok_path.is_file():
        train_bpe(_training_texts(corpus_dir, bpe_sample_bytes, on_error), vocab_size, tok_path)
    sha = _sha256(tok_path)
    tok = load_tokenizer(tok_path)
    n_vocab = tok.get_vocab_size(with_added_tokens=True)
    dtype = "uint16" if n_vocab <= 1 << 16 else "uint32"

    tasks = []
    for split in splits:
        try:
            base = slimpajama.split_dir(corpus_dir, split)
        except FileNotFoundError:  # this split is absent
            continue
        if base == corpus_dir and split != "train":  # no split folders: everything is train
            continue
        files = slimpajama.list_files(corpus_dir, split)
        for i in range(0, len(files), files_per_task):
            group = files[i : i + files_per_task]
            key = _file_key(base, group[0]) + (f"__{len(group)}files" if files_per_task > 1 else "")
            tasks.append(_Task(split, tuple(str(f) for f in group), key))
    if not tasks:
        raise FileNotFoundError(f"no corpus files for splits {splits} under {corpus_dir}")
    todo = [t for t in tasks if not _is_done(out, t, sha)]
    init = (str(tok_path), str(out), dtype, on_error, sha)
    t0, tokens = time.perf_counter(), 0
    bar = tqdm(total=len(todo), unit="task", desc="prepare", disable=not progress)
    if workers == 1 or len(todo) <= 1:
        _init_worker(*init)
        results = map(_run_task, todo)
    else:
        pool = _mp.context().Pool(min(workers, len(todo)), _init_worker, (*init, False))
        results = pool.imap_unordered(_run_task, todo)
    try:
        for marker in results:
            tokens += sum(s["tokens"] for s in marker["sources"].values())
            bar.update(1)
            bar.set_postfix(tokens=tokens)
    finally:
        bar.close()
        if workers > 1 and len(todo) > 1:
            pool.close()
            pool.join()
    stats = PrepareStats(len(todo), len(tasks) - len(todo), tokens, time.perf_counter() - t0)
    manifest = _write_manifest(out, tasks, n_vocab, eos_id(tok), dtype, sha)
    return manifest, stats


def _write_manifest(
    out: Path, tasks: list[_Task], n_vocab: int, eos: int, dtype: str, sha: str
) -> Manifest:
    splits: dict = {}
    skips: dict = {}
    for task in tasks:
        marker = json.loads((out / task.split / "_done" / f"{task.key}.json").read_text())
        for reason, n in marker["skips"].items():
            skips[reason] = skips.get(reason, 0) + n
        for source, s in marker["sources"].items():
            entry = splits.setdefault(task.split, {}).setdefault(
                source, {"docs": 0, "tokens": 0, "shards": []}
            )
            entry["docs"] += s["docs"]
            entry["tokens"] += s["tokens"]
            if s["docs"]:
                entry["shards"].append(s["shard"])
    for split in splits.values():
        for entry in split.values():
            entry["shards"].sort()
    manifest = Manifest(
        vocab_size=n_vocab,
        eos_id=eos,
        dtype=dtype,
        tokenizer=TOKENIZER,
        tokenizer_sha256=sha,
        splits=splits,
        skips=skips,
    )
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(dataclasses.asdict(manifest), indent=1))
    os.replace(tmp, out / MANIFEST)
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m data.prepare",
        description="Tokenize a SlimPajama-format corpus into per-source, per-split ArrayRecord "
        "shards plus manifest.json. Resumable: re-running skips finished files.",
    )
    parser.add_argument(
        "--corpus", required=True, help="corpus root (e.g. SlimPajama-627B or a data.synthetic dir)"
    )
    parser.add_argument("--out", required=True, help="prepared output directory")
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer.json (e.g. GPT-NeoX-20B's); default: train a byte-level BPE on the corpus",
    )
    parser.add_argument(
        "--vocab-size", type=int, default=4096, help="BPE vocab size when training (default 4096)"
    )
    parser.add_argument(
        "--splits", default=",".join(slimpajama.SPLITS), help="comma-separated splits"
    )
    parser.add_argument("--workers", type=int, default=None, help="processes (default: CPU count)")
    parser.add_argument(
        "--files-per-task",
        type=int,
        default=1,
        help="input files per shard and unit of resumption (e.g. 64 for SlimPajama-627B)",
    )
    parser.add_argument(
        "--on-error",
        choices=("raise", "skip"),
        default="raise",
        help="bad input: stop with an error naming file and line, or skip and count",
    )
    args = parser.parse_args(argv)
    manifest, stats = prepare(
        args.corpus,
        args.out,
        tokenizer=args.tokenizer,
        vocab_size=args.vocab_size,
        splits=tuple(args.splits.split(",")),
        workers=args.workers,
        on_error=args.on_error,
        files_per_task=args.files_per_task,
    )
    print(
        f"tasks: {stats.tasks_run} tokenized, {stats.tasks_skipped} already done; "
        f"{stats.tokens} tokens in {stats.seconds:.1f}s ({stats.tokens_per_s:,.0f} tokens/s)"
    )
    for split, per_source in manifest.splits.items():
        for source, v in sorted(per_source.items()):
            print(f"  {split:<10} {source:<24} docs={v['docs']:>8} tokens={v['tokens']:>10}")
    if manifest.skips:
        print("skipped: " + ", ".join(f"{r}={n}" for r, n in sorted(manifest.skips.items())))


if __name__ == "__main__":
    main()
