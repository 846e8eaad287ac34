"""Hugging Face ``tokenizers``: load a ``tokenizer.json`` or train a small byte-level BPE."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOS_CANDIDATES: tuple[str, ...] = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>")
DEFAULT_EOS = "<|endoftext|>"


def load_tokenizer(path: Path | str) -> Tokenizer:
    """Loads a ``tokenizer.json`` (e.g. GPT-NeoX-20B's)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {path} does not exist")
    return Tokenizer.from_file(str(path))


def eos_id(tokenizer: Tokenizer) -> int:
    """Id of the end-of-text token (first of :data:`EOS_CANDIDATES` found in the vocabulary)."""
    for name in EOS_CANDIDATES:
        idx = tokenizer.token_to_id(name)
        if idx is not None:
            return idx
    raise ValueError(f"tokenizer has none of the end-of-text tokens {EOS_CANDIDATES}")


def train_bpe(texts: Iterable[str], vocab_size: int, out_path: Path | str) -> Tokenizer:
    """Trains a byte-level BPE (GPT-2 pre-tokenization) on ``texts`` and saves it to ``out_path``.

    The vocabulary holds :data:`DEFAULT_EOS` as id 0, like GPT-NeoX-20B.
    """
    if vocab_size < 300:
        raise ValueError(f"vocab_size must be >= 300 (256 bytes + merges), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[DEFAULT_EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    tok.save(str(tmp))
    tmp.replace(out_path)
    return tok
