"""Grain input pipeline: per-source token shards -> token-weighted mixture -> packed int32 batches.

Per source (``split`` of a prepared directory)::

    ArrayRecordDataSource -> shuffle(seed, reshuffled every epoch) -> repeat
    -> [process_index::process_count] -> decode (stored ids + EOS -> int32) -> to_iter_dataset

then :class:`MixIterDataset` interleaves documents so each source gets its share of *tokens* (smooth
weighted round robin on token credits, keyed by source name), :class:`PackIterDataset` concatenates
the documents (EOS after each) into ``batch_size`` rows of ``seq_len`` and, with ``worker_count >
0``, Grain runs everything in ``worker_count`` processes (``mp_prefetch``).

The iterator is a Grain ``DatasetIterator``: ``get_state()`` returns a JSON-serializable dict,
``set_state(state)`` on an iterator built with the same arguments continues exactly; Orbax saves it
with ``grain.checkpoint.CheckpointSave(it)`` / ``CheckpointRestore(it)``. Mixture weights may change
between save and restore (states are keyed by source name); ``worker_count`` may not.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import grain
import numpy as np
from absl import flags
from array_record.python.array_record_data_source import ArrayRecordDataSource

from data.mixtures import Mixture, get_mixture
from data.prepare import Manifest, load_manifest
from data.slimpajama import SOURCES, SPLITS

BATCH_KEYS: tuple[str, ...] = ("tokens", "targets", "segment_ids", "positions", "source_ids")
IGNORE_TARGET = -1  # targets value that carries no loss (the target of an EOS token)


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Arguments of :func:`make_pipeline` (validated)."""

    prepared_dir: str
    mixture: Mixture
    seq_len: int
    batch_size: int
    seed: int
    split: str = "train"
    process_index: int = 0
    process_count: int = 1
    worker_count: int = 0
    # Grain ReadOptions.num_threads per source (0: read in the calling thread; local shards are
    # read fastest that way).
    read_threads: int = 0

    def __post_init__(self):
        for name in ("seq_len", "batch_size", "process_count"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("seed", "process_index", "worker_count", "read_threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        if self.process_index >= self.process_count:
            raise ValueError(
                f"process_index {self.process_index} must be < process_count {self.process_count}"
            )
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")


def _source_seed(seed: int, source: str) -> int:
    return int(np.random.SeedSequence([seed, SOURCES.index(source)]).generate_state(1)[0])


class _Decode(grain.transforms.Map):
    def __init__(self, dtype: str, eos: int):
        self._dtype = np.dtype(dtype)
        self._eos = eos

    def map(self, record: bytes) -> np.ndarray:
        ids = np.frombuffer(record, dtype=self._dtype)
        out = np.empty(len(ids) + 1, dtype=np.int32)
        out[:-1] = ids
        out[-1] = self._eos
        return out


def source_dataset(
    prepared_dir: Path, manifest: Manifest, cfg: PipelineConfig, source: str
) -> grain.IterDataset:
    """Documents of one source (int32 ids, EOS appended), shuffled, repeated, sharded by process."""
    shards = manifest.splits[cfg.split][source]["shards"]
    ds = grain.MapDataset.source(ArrayRecordDataSource([str(prepared_dir / s) for s in shards]))
    ds = ds.shuffle(seed=_source_seed(cfg.seed, source)).repeat()
    ds = ds[cfg.process_index :: cfg.process_count]
    ds = ds.map(_Decode(manifest.dtype, manifest.eos_id))
    return ds.to_iter_dataset(
        grain.ReadOptions(num_threads=cfg.read_threads, prefetch_buffer_size=64)
    )


class MixIterDataset(grain.IterDataset):
    """Interleaves documents of named sources so that each gets ``proportions[name]`` of the tokens.

    Smooth weighted round robin on token credits: the source with the largest credit gives the next
    document of ``n`` tokens, then every source ``s`` gains ``p_s * n`` and the chosen one loses
    ``n``. Credits sum to zero and stay within a document length of zero, so token shares converge
    at rate O(max doc length / tokens seen). Yields ``(doc_int32, source_id)`` with ``source_id``
    the index in :data:`data.SOURCES`. (``grain.IterDataset.mix`` balances element counts, not
    tokens, and keys its state by position; this one keys it by source name.)
    """

    def __init__(self, parents: dict[str, grain.IterDataset], proportions: dict[str, float]):
        super().__init__(list(parents.values()))
        if set(parents) != set(proportions):
            raise ValueError(
                f"sources {sorted(parents)} and proportions {sorted(proportions)} differ"
            )
        self._names = list(parents)
        self._proportions = proportions

    def __iter__(self) -> _MixIterator:
        return _MixIterator([p.__iter__() for p in self.parents], self._names, self._proportions)

    def __str__(self) -> str:
        return f"MixIterDataset({self._proportions})"


class _MixIterator(grain.DatasetIterator):
    def __init__(self, parents, names: list[str], proportions: dict[str, float]):
        super().__init__(parents)
        self._names = names
        self._p = np.array([proportions[n] for n in names], dtype=np.float64)
        self._ids = [SOURCES.index(n) for n in names]
        self._credit = np.zeros(len(names), dtype=np.float64)

    def __next__(self) -> tuple[np.ndarray, int]:
        k = int(np.argmax(self._credit))
        doc = next(self._parents[k])
        n = len(doc)
        self._credit += self._p * n
        self._credit[k] -= n
        return doc, self._ids[k]

    def get_state(self) -> dict[str, Any]:
        return {
            "credit": {n: float(c) for n, c in zip(self._names, self._credit, strict=True)},
            "sources": {n: p.get_state() for n, p in zip(self._names, self._parents, strict=True)},
        }

    def set_state(self, state: dict[str, Any]) -> None:
        for n, p in zip(self._names, self._parents, strict=True):
            if n in state["sources"]:  # a source added since the checkpoint starts fresh
                p.set_state(state["sources"][n])
        credit = np.array([state["credit"].get(n, 0.0) for n in self._names])
        self._credit = credit - credit.mean()  # keep credits summing to zero after a weight change


class PackIterDataset(grain.IterDataset):
    """Packs ``(doc, source_id)`` into batches: :data:`BATCH_KEYS` -> ``int32 [batch, seq_len]``.

    Documents (EOS already appended) are concatenated into one stream; row ``r`` of the stream holds
    tokens ``[r*L, (r+1)*L)`` and targets ``[r*L+1, (r+1)*L+1)``, so a document cut at a row end
    continues in the next row. ``segment_ids`` number the documents of a row from 1; ``positions``
    count from 0 within each segment of a row; the target of an EOS token is :data:`IGNORE_TARGET`.
    No padding is ever emitted.
    """

    def __init__(self, parent: grain.IterDataset, seq_len: int, batch_size: int):
        super().__init__(parent)
        self._seq_len = seq_len
        self._batch_size = batch_size

    def __iter__(self) -> _PackIterator:
        return _PackIterator(self._parent.__iter__(), self._seq_len, self._batch_size)

    def __str__(self) -> str:
        return f"PackIterDataset(seq_len={self._seq_len}, batch_size={self._batch_size})"


class _PackIterator(grain.DatasetIterator):
    def __init__(self, parent, seq_len: int, batch_size: int):
        super().__init__(parent)
        self._L, self._B = seq_len, batch_size
        self._doc: np.ndarray | None = None  # current document (EOS included) and its source id
        self._src = 0
        self._offset = 0  # tokens of the current document already emitted
        self._doc_state = parent.get_state()  # parent state *before* the current document was read

    def _fetch(self) -> None:
        self._doc_state = self._parent.get_state()
        self._doc, self._src = next(self._parent)
        self._offset = 0

    def __next__(self) -> dict[str, np.ndarray]:
        L, B = self._L, self._B
        need = B * L + 1  # +1: the last target, which stays in the stream for the next batch
        pieces, srcs, ends = [], [], []
        have = 0
        while have < need:
            if self._doc is None or self._offset == len(self._doc):
                self._fetch()
            take = min(len(self._doc) - self._offset, need - have)
            pieces.append(self._doc[self._offset : self._offset + take])
            srcs.append(self._src)
            ends.append(self._offset + take == len(self._doc))
            have += take
            self._offset += take
        self._offset -= 1  # give the look-ahead token back
        lengths = np.fromiter((len(p) for p in pieces), dtype=np.int64, count=len(pieces))
        flat = np.concatenate(pieces)
        piece_id = np.repeat(np.arange(len(pieces), dtype=np.int32), lengths)
        is_eos = np.zeros(need, dtype=bool)
        is_eos[np.cumsum(lengths)[np.array(ends)] - 1] = True
        tokens = flat[:-1].reshape(B, L)
        targets = np.where(is_eos[:-1], IGNORE_TARGET, flat[1:]).astype(np.int32).reshape(B, L)
        pid = piece_id[:-1].reshape(B, L)
        new_seg = np.ones((B, L), dtype=bool)
        new_seg[:, 1:] = pid[:, 1:] != pid[:, :-1]
        segment_ids = np.cumsum(new_seg, axis=1, dtype=np.int32)
        col = np.broadcast_to(np.arange(L, dtype=np.int32), (B, L))
        seg_start = np.maximum.accumulate(np.where(new_seg, col, 0), axis=1)
        positions = (col - seg_start).astype(np.int32)
        source_ids = np.repeat(np.asarray(srcs, dtype=np.int32), lengths)[:-1].reshape(B, L)
        return {
            "tokens": tokens,
            "targets": targets,
            "segment_ids": segment_ids,
            "positions": positions,
            "source_ids": source_ids,
        }

    def get_state(self) -> dict[str, Any]:
        if self._doc is None:
            return {"parent": self._parent.get_state(), "offset": 0}
        return {"parent": self._doc_state, "offset": int(self._offset)}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._doc = None
        if state["offset"]:
            self._fetch()
            self._offset = int(state["offset"])


def make_pipeline(
    prepared_dir: Path | str,
    mixture: str | Path | Mixture,
    seq_len: int,
    batch_size: int,
    seed: int,
    split: str = "train",
    process_index: int = 0,
    process_count: int = 1,
    worker_count: int = 0,
) -> grain.DatasetIterator:
    """An infinite iterator of packed batches from a prepared directory (see :mod:`data.prepare`).

    Args:
      prepared_dir: output of ``python -m data.prepare``.
      mixture: preset name, ``"Source=w,..."``, YAML path or :class:`data.Mixture` (token
        proportions).
      seq_len: tokens per row.
      batch_size: rows per batch on this process.
      seed: shuffling seed; same arguments -> same batches.
      split: ``"train"``, ``"validation"`` or ``"test"``.
      process_index, process_count: this host's shard of every source (e.g.
        ``jax.process_index()``, ``jax.process_count()``).
      worker_count: Grain prefetch processes (0: in this process); changes the batch order, and a
        checkpoint restores only with the same value. Close such an iterator with ``it.close()``.

    Returns:
      A ``grain.DatasetIterator``; ``next(it)`` is a dict of :data:`BATCH_KEYS` -> ``np.int32
      [batch_size, seq_len]``; ``it.get_state()`` / ``it.set_state(state)`` checkpoint it.
    """
    prepared_dir = Path(prepared_dir)
    cfg = PipelineConfig(
        str(prepared_dir),
        get_mixture(mixture),
        seq_len,
        batch_size,
        seed,
        split,
        process_index,
        process_count,
        worker_count,
    )
    manifest = load_manifest(prepared_dir)
    cfg.mixture.check_available(manifest.tokens(split))
    proportions = cfg.mixture.proportions
    sources = {s: source_dataset(prepared_dir, manifest, cfg, s) for s in proportions}
    ds: grain.IterDataset = PackIterDataset(
        MixIterDataset(sources, proportions), seq_len, batch_size
    )
    if worker_count > 0:
        if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags; use their defaults
            flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=worker_count, per_worker_buffer_size=2)
        )
    return ds.__iter__()
