"""A small, deterministic SlimPajama-format demo corpus with planted duplicates.

``python -m data.synthetic --out DIR --seed N`` writes, in a second or two::

    DIR/train/chunk1/example_train_0.jsonl.zst ...
    DIR/validation/chunk1/...
    DIR/test/chunk1/...
    DIR/planted_duplicates.json      ground truth of the planted duplicates

(SlimPajama-627B layout; ``--layout per-source`` writes
``DIR/<split>/RedPajama<Source>/*.jsonl.zst``.)

Each source has its own style (web prose with boilerplate, clean web prose, code, book chapters with
dialogue, LaTeX-like papers, encyclopedic articles, Q&A threads). Planted duplicates (train split
only): exact and near copies (a few words replaced, Jaccard of character 13-grams ~0.97) within a
source, and exact and near copies of CommonCrawl documents placed in C4, Wikipedia and StackExchange
(across sources). Rows carry ``meta.synthetic_id`` so tests can check the dedup against the ground
truth.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import zstandard

from data.slimpajama import SOURCES, SPLITS

_SYLLABLES = (
    "ka ri to ne sa mo lu vi de ra po ti an el or is un ba co fe gi ha jo ke li ma "
    "no pe qu ro si ta ve wo xi ya ze bro cla dri fle gro pla tri sta spe"
).split()
_PYTHON_WORDS = (
    "def return if else for in while import from class self None True False yield".split()
)

# Relative number of documents per source, roughly following SlimPajama's token shares / doc
# lengths.
_DOC_SHARE = {
    "RedPajamaCommonCrawl": 0.36,
    "RedPajamaC4": 0.30,
    "RedPajamaGithub": 0.08,
    "RedPajamaBook": 0.03,
    "RedPajamaArXiv": 0.06,
    "RedPajamaWikipedia": 0.09,
    "RedPajamaStackExchange": 0.08,
}
_SPLIT_SHARE = {"train": 1.0, "validation": 0.06, "test": 0.06}


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Size and layout of the demo corpus."""

    seed: int = 0
    train_docs: int = 1500  # documents in the train split before duplicates are planted
    files_per_chunk: int = 2  # .jsonl.zst files per chunk folder
    train_chunks: int = 2  # chunk folders of the train split (validation/test get one)
    layout: str = (
        "slimpajama"  # "slimpajama" (chunkK/example_*) or "per-source" (RedPajama<Source>/)
    )
    dup_fraction: float = 0.04  # planted duplicates per source, as a fraction of its documents

    def __post_init__(self):
        if self.train_docs < 50:
            raise ValueError(f"train_docs must be >= 50, got {self.train_docs}")
        if self.files_per_chunk < 1 or self.train_chunks < 1:
            raise ValueError("files_per_chunk and train_chunks must be >= 1")
        if self.layout not in ("slimpajama", "per-source"):
            raise ValueError(f"layout must be 'slimpajama' or 'per-source', got {self.layout!r}")
        if not 0.0 <= self.dup_fraction < 0.5:
            raise ValueError(f"dup_fraction must be in [0, 0.5), got {self.dup_fraction}")


class _Writer:
    """Random text in seven styles from one numpy Generator."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        lex = np.random.default_rng(1234)  # fixed lexicon: same words for every seed
        words = set()
        while len(words) < 6000:
            n = int(lex.integers(1, 4))
            words.add("".join(lex.choice(_SYLLABLES, size=n)))
        # Zipf-like word frequencies, the rank independent of the spelling.
        self.words = lex.permutation(np.array(sorted(words)))
        p = 1.0 / np.arange(1, len(self.words) + 1) ** 1.05
        self.p = p / p.sum()

    def w(self, n: int) -> list[str]:
        idx = self.rng.choice(len(self.words), size=n, p=self.p)
        return self.words[idx].tolist()

    def name(self) -> str:
        return " ".join(x.capitalize() for x in self.w(int(self.rng.integers(1, 3))))

    def sentence(self, lo: int = 6, hi: int = 18) -> str:
        words = self.w(int(self.rng.integers(lo, hi)))
        return (
            words[0].capitalize()
            + " "
            + " ".join(words[1:])
            + self.rng.choice([".", ".", ".", "!", "?"])
        )

    def paragraph(self, lo: int = 2, hi: int = 7) -> str:
        return " ".join(self.sentence() for _ in range(int(self.rng.integers(lo, hi))))

    def n(self, lo: int, hi: int) -> int:
        return int(self.rng.integers(lo, hi))

    def common_crawl(self) -> str:
        head = f"{self.name()} | {self.name()} - Home"
        body = "\n\n".join(self.paragraph() for _ in range(self.n(2, 8)))
        tail = f"Posted on {self.n(1, 29)}/{self.n(1, 13)}/20{self.n(10, 24)} by {self.name()}. "
        tail += (
            "Click here to subscribe. Share this: Facebook Twitter Email. Comments ("
            + str(self.n(0, 40))
            + ")"
        )
        return f"{head}\n{body}\n{tail}"

    def c4(self) -> str:
        return "\n".join(self.paragraph(2, 5) for _ in range(self.n(2, 6)))

    def github(self) -> str:
        lines = [
            f"# {self.sentence(4, 9)}",
            f"import {self.w(1)[0]}",
            f"from {self.w(1)[0]} import {self.w(1)[0]}",
            "",
        ]
        for _ in range(self.n(2, 6)):
            fn, args = self.w(1)[0], ", ".join(self.w(self.n(1, 4)))
            lines += [f"def {fn}_{self.w(1)[0]}({args}):", f'    """{self.sentence(4, 10)}"""']
            for _ in range(self.n(2, 8)):
                a, b = self.w(2)
                kw = self.rng.choice(_PYTHON_WORDS)
                lines.append(f"    {a} = {b}({self.n(0, 100)}) if {kw} else {a}_{b}")
            lines += [f"    return {self.w(1)[0]}", ""]
        return "\n".join(lines)

    def book(self) -> str:
        parts = [f"CHAPTER {self.rng.choice(['I', 'II', 'III', 'IV', 'V', 'VI', 'VII'])}", ""]
        for _ in range(self.n(10, 24)):
            if self.rng.random() < 0.4:
                parts.append(f'"{self.sentence()}" said {self.name()}. "{self.sentence()}"')
            else:
                parts.append(self.paragraph(3, 8))
        return "\n\n".join(parts)

    def arxiv(self) -> str:
        parts = [
            f"\\title{{{self.sentence(4, 9)}}}",
            "\\begin{abstract}",
            self.paragraph(),
            "\\end{abstract}",
        ]
        for k in range(self.n(2, 5)):
            parts.append(f"\\section{{{self.name()}}}")
            parts.append(self.paragraph())
            a, b = self.w(2)
            parts.append(
                f"\\begin{{equation}}\n\\{a}_{{{k}}} = \\sum_{{i=1}}^{{N}} "
                f"x_i^{{{self.n(2, 5)}}} + \\{b}\n\\end{{equation}}"
            )
            parts.append(
                f"where $x_i$ is the {self.w(1)[0]} of ${a}$ "
                f"\\cite{{{self.w(1)[0]}{self.n(1990, 2024)}}}."
            )
        return "\n".join(parts)

    def wikipedia(self) -> str:
        title = self.name()
        parts = [
            title,
            f"{title} is a {self.w(1)[0]} {self.w(1)[0]} in {self.name()}. {self.paragraph(2, 4)}",
        ]
        for _ in range(self.n(1, 4)):
            parts.append(f"== {self.name()} ==")
            parts.append(self.paragraph(3, 6))
        parts.append("== References ==")
        return "\n\n".join(parts)

    def stack_exchange(self) -> str:
        parts = [f"Q: {self.sentence(6, 14)[:-1]}?", self.paragraph(2, 4)]
        for _ in range(self.n(1, 4)):
            parts.append(f"A: {self.paragraph(2, 5)}")
            if self.rng.random() < 0.5:
                parts.append(f"    {self.w(1)[0]}({self.n(0, 9)})")
        return "\n\n".join(parts)

    def short(self) -> str:
        return self.sentence(3, 8)

    def document(self, source: str) -> str:
        if self.rng.random() < 0.02:
            return self.short()  # < 200 characters: dropped by the dedup recipe
        return {
            "RedPajamaCommonCrawl": self.common_crawl,
            "RedPajamaC4": self.c4,
            "RedPajamaGithub": self.github,
            "RedPajamaBook": self.book,
            "RedPajamaArXiv": self.arxiv,
            "RedPajamaWikipedia": self.wikipedia,
            "RedPajamaStackExchange": self.stack_exchange,
        }[source]()

    def near_copy(self, text: str) -> str:
        """Replaces ~one word per 1500 characters (at least one)."""
        words = text.split(" ")
        for i in self.rng.choice(len(words), size=max(1, len(text) // 1500), replace=False):
            words[i] = self.w(1)[0] + "x"
        return " ".join(words)


def _split_docs(writer: _Writer, split: str, cfg: SyntheticConfig) -> tuple[list[dict], dict]:
    rows: list[dict] = []
    planted = {"exact_within": [], "near_within": [], "exact_cross": [], "near_cross": []}
    total = max(len(SOURCES), int(round(cfg.train_docs * _SPLIT_SHARE[split])))
    by_source: dict[str, list[dict]] = {}
    for source in SOURCES:
        n = max(2, int(round(total * _DOC_SHARE[source])))
        docs = []
        for i in range(n):
            docs.append(
                {
                    "text": writer.document(source),
                    "meta": {"redpajama_set_name": source, "synthetic_id": f"{split}/{source}/{i}"},
                }
            )
        by_source[source] = docs
    if split == "train" and cfg.dup_fraction > 0:
        for source, docs in by_source.items():
            long_docs = [d for d in docs if len(d["text"]) >= 400]
            n_dup = max(1, int(len(docs) * cfg.dup_fraction))
            for k in range(n_dup):
                orig = long_docs[int(writer.rng.integers(len(long_docs)))]
                kind = "exact_within" if k % 2 == 0 else "near_within"
                text = orig["text"] if kind == "exact_within" else writer.near_copy(orig["text"])
                dup_id = f"{split}/{source}/dup{k}"
                docs.append(
                    {"text": text, "meta": {"redpajama_set_name": source, "synthetic_id": dup_id}}
                )
                planted[kind].append([orig["meta"]["synthetic_id"], dup_id])
        cc = [d for d in by_source["RedPajamaCommonCrawl"] if len(d["text"]) >= 400]
        for target in ("RedPajamaC4", "RedPajamaWikipedia", "RedPajamaStackExchange"):
            for k in range(max(1, int(len(by_source[target]) * cfg.dup_fraction))):
                orig = cc[int(writer.rng.integers(len(cc)))]
                kind = "exact_cross" if k % 2 == 0 else "near_cross"
                text = orig["text"] if kind == "exact_cross" else writer.near_copy(orig["text"])
                dup_id = f"{split}/{target}/xdup{k}"
                by_source[target].append(
                    {"text": text, "meta": {"redpajama_set_name": target, "synthetic_id": dup_id}}
                )
                planted[kind].append([orig["meta"]["synthetic_id"], dup_id])
    for docs in by_source.values():
        rows.extend(docs)
    return rows, planted


def _write_jsonl_zst(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    path.write_bytes(zstandard.ZstdCompressor(level=3).compress(payload))


def generate(out_dir: Path | str, seed: int = 0, **config) -> Path:
    """Writes the demo corpus to ``out_dir``, returns it; ``config``: :class:`SyntheticConfig`."""
    cfg = SyntheticConfig(seed=seed, **config)
    out = Path(out_dir)
    rng = np.random.default_rng(cfg.seed)
    writer = _Writer(rng)
    all_planted = {}
    for split in SPLITS:
        rows, planted = _split_docs(writer, split, cfg)
        for kind, pairs in planted.items():
            all_planted.setdefault(kind, []).extend(pairs)
        order = rng.permutation(len(rows))
        rows = [rows[i] for i in order]
        if cfg.layout == "slimpajama":
            chunks = cfg.train_chunks if split == "train" else 1
            n_files = chunks * cfg.files_per_chunk
            for f in range(n_files):
                chunk, idx = divmod(f, cfg.files_per_chunk)
                path = out / split / f"chunk{chunk + 1}" / f"example_{split}_{idx}.jsonl.zst"
                _write_jsonl_zst(path, rows[f::n_files])
        else:
            for source in SOURCES:
                src_rows = [r for r in rows if r["meta"]["redpajama_set_name"] == source]
                for f in range(cfg.files_per_chunk):
                    _write_jsonl_zst(
                        out / split / source / f"{source}_{f}.jsonl.zst",
                        src_rows[f :: cfg.files_per_chunk],
                    )
    (out / "planted_duplicates.json").write_text(json.dumps(all_planted, indent=1))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m data.synthetic",
        description="Generate a small SlimPajama-format demo corpus (7 sources, "
        "train/validation/test) "
        "with planted exact and near duplicates. Deterministic by --seed.",
    )
    parser.add_argument("--out", required=True, help="output corpus directory")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--train-docs",
        type=int,
        default=SyntheticConfig.train_docs,
        help="train documents before planted duplicates (default %(default)s)",
    )
    parser.add_argument("--files-per-chunk", type=int, default=SyntheticConfig.files_per_chunk)
    parser.add_argument("--train-chunks", type=int, default=SyntheticConfig.train_chunks)
    parser.add_argument("--layout", choices=("slimpajama", "per-source"), default="slimpajama")
    parser.add_argument(
        "--dup-fraction",
        type=float,
        default=SyntheticConfig.dup_fraction,
        help="planted duplicates per source as a fraction of its documents",
    )
    args = parser.parse_args(argv)
    out = generate(
        args.out,
        seed=args.seed,
        train_docs=args.train_docs,
        files_per_chunk=args.files_per_chunk,
        train_chunks=args.train_chunks,
        layout=args.layout,
        dup_fraction=args.dup_fraction,
    )
    print(f"wrote demo corpus to {out}")


if __name__ == "__main__":
    main()
