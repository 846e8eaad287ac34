"""Configuration: frozen, validated model/training configs, named presets, `--key=value` overrides.

A run is described by one `RunConfig` (a `ModelConfig` plus a `TrainConfig`). It is built from a
preset and command-line overrides, printed at the start of a run and saved as `config.json` in the
run directory, from which `--resume`, `pretrain.generate` and `pretrain.plot` read it back.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import math
import re
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

ATTENTION_CHOICES = ("auto", "reference", "cudnn", "xla")
REMAT_CHOICES = ("none", "full", "dots", "dots_attention")
DTYPE_CHOICES = ("bfloat16", "float32")
DECAY_CHOICES = ("cosine", "linear")
VOCAB_MULTIPLE = 128  # embedding rows are padded to this multiple (tensor-core friendly)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Decoder-only ALiBi/SwiGLU language model (SlimPajama-DC / BTLM style)."""

    vocab_size: int = 50277  # tokenizer vocabulary; embedding rows = `padded_vocab_size`
    d_model: int = 2048  # residual stream width
    n_layers: int = 24  # transformer blocks
    n_heads: int = 16  # attention heads; head_dim = d_model // n_heads
    d_ff: int = 5461  # SwiGLU hidden width (≈ 8/3 · d_model)
    max_seq_len: int = 2048  # context length the preset is meant for (ALiBi extrapolates beyond)
    use_bias: bool = False  # biases in the attention and MLP projections
    norm_eps: float = 1e-5  # LayerNorm epsilon
    init_std: float = 0.02  # std of the normal initializer of every matrix
    embedding_multiplier: float = 1.0  # muP: token embeddings are scaled by this (BTLM: 14.6)
    output_multiplier: float = 1.0  # muP: logits are scaled by this (BTLM: base width / d_model)
    attention_scale: Literal["sqrt", "inverse"] = "sqrt"  # softmax scale 1/sqrt(hd) or muP's 1/hd
    attention: Literal["auto", "reference", "cudnn", "xla"] = "auto"  # attention implementation
    dtype: Literal["bfloat16", "float32"] = "bfloat16"  # compute dtype (parameters stay fp32)
    remat: Literal["none", "full", "dots", "dots_attention"] = "full"  # block remat policy

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len"):
            value = getattr(self, name)
            _check(
                isinstance(value, int) and value > 0,
                f"{name} must be a positive int, got {value!r}",
            )
        _check(
            self.d_model % self.n_heads == 0,
            f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})",
        )
        for name in ("norm_eps", "init_std", "embedding_multiplier", "output_multiplier"):
            value = getattr(self, name)
            _check(value > 0, f"{name} must be > 0, got {value!r}")
        _check(
            self.attention_scale in ("sqrt", "inverse"),
            f"attention_scale must be 'sqrt' or 'inverse', got {self.attention_scale!r}",
        )
        _check(
            self.attention in ATTENTION_CHOICES,
            f"attention must be one of {ATTENTION_CHOICES}, got {self.attention!r}",
        )
        _check(
            self.dtype in DTYPE_CHOICES, f"dtype must be one of {DTYPE_CHOICES}, got {self.dtype!r}"
        )
        _check(
            self.remat in REMAT_CHOICES, f"remat must be one of {REMAT_CHOICES}, got {self.remat!r}"
        )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def padded_vocab_size(self) -> int:
        return -(-self.vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE

    @property
    def softmax_scale(self) -> float:
        return 1.0 / self.head_dim if self.attention_scale == "inverse" else self.head_dim**-0.5

    def num_params(self) -> int:
        """Exact parameter count (embedding tied to the output layer, padded rows included)."""
        d, f = self.d_model, self.d_ff
        bias = self.use_bias
        attn = 4 * d * d + (4 * d if bias else 0)
        mlp = 3 * d * f + ((2 * f + d) if bias else 0)
        norms = 2 * (2 * d)
        return self.padded_vocab_size * d + self.n_layers * (attn + mlp + norms) + 2 * d

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward = 3 × forward), without rematerialisation.

        Matmuls: 6 · (all parameters; the tied embedding counts once, as the output layer).
        Causal attention: QKᵀ and PV cost 2 · 2 · seq · d_model per token per layer when every key
        is visited; causal halves that, so training adds 6 · n_layers · d_model · seq_len.
        """
        return 6.0 * self.num_params() + 6.0 * self.n_layers * self.d_model * seq_len


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation, data, parallelism, logging and checkpointing of one run."""

    data_dir: str = "runs/demo_data/prepared"  # output of `python -m data.prepare`
    mixture: str = "DC-6"  # data mixture preset, "Source=w,..." or a YAML path
    run_dir: str = "runs/tiny"  # where config.json, metrics, checkpoints and plots go
    seq_len: int = 0  # training sequence length; 0 = the model's max_seq_len
    global_batch: int = 8  # sequences per optimiser step, over all devices and microbatches
    microbatches: int = 1  # gradient accumulation steps per optimiser step
    steps: int = 200  # optimiser steps in total
    lr: float = 3e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # final learning rate as a fraction of the peak
    warmup_steps: int = 20  # linear warm-up from 0 to the peak
    decay: Literal["cosine", "linear"] = "cosine"  # decay shape after warm-up
    weight_decay: float = 0.1  # decoupled AdamW decay (never on norms or biases)
    beta1: float = 0.9  # AdamW β1
    beta2: float = 0.95  # AdamW β2
    adam_eps: float = 1e-8  # AdamW ε
    grad_clip: float = 1.0  # global-norm clipping threshold; 0 = off
    seed: int = 0  # parameter init and data order
    data_workers: int = 0  # grain prefetch processes (0 = in the main process)
    mesh_data: int = 1  # data-parallel axis size; mesh_data × mesh_fsdp = device count
    mesh_fsdp: int = 0  # FSDP axis size; 0 = all devices not used by mesh_data
    log_every: int = 10  # steps between metric records
    eval_every: int = 100  # steps between per-source validation losses; 0 = off
    eval_batches: int = 4  # validation batches per source
    checkpoint_every: int = 100  # steps between checkpoints; 0 = only at the end
    keep_checkpoints: int = 3  # checkpoints kept on disk
    peak_tflops: float = 0.0  # device peak for MFU; 0 = look the device up (unknown: no MFU)
    distributed: bool = False  # call jax.distributed.initialize() (multi-host runs)
    progress: bool = True  # show a tqdm progress bar

    def __post_init__(self):
        for name in ("global_batch", "microbatches", "steps", "eval_batches", "keep_checkpoints"):
            value = getattr(self, name)
            _check(
                isinstance(value, int) and value > 0,
                f"{name} must be a positive int, got {value!r}",
            )
        for name in (
            "seq_len",
            "warmup_steps",
            "data_workers",
            "mesh_fsdp",
            "log_every",
            "eval_every",
            "checkpoint_every",
        ):
            value = getattr(self, name)
            _check(
                isinstance(value, int) and value >= 0, f"{name} must be an int >= 0, got {value!r}"
            )
        _check(self.mesh_data >= 1, f"mesh_data must be >= 1, got {self.mesh_data!r}")
        _check(self.log_every >= 1, f"log_every must be >= 1, got {self.log_every!r}")
        _check(
            self.global_batch % self.microbatches == 0,
            f"global_batch ({self.global_batch}) must be divisible by "
            f"microbatches ({self.microbatches})",
        )
        _check(self.lr > 0, f"lr must be > 0, got {self.lr!r}")
        _check(
            0 <= self.min_lr_ratio <= 1,
            f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}",
        )
        _check(
            self.warmup_steps < self.steps,
            f"warmup_steps ({self.warmup_steps}) must be < steps ({self.steps})",
        )
        _check(
            self.decay in DECAY_CHOICES, f"decay must be one of {DECAY_CHOICES}, got {self.decay!r}"
        )
        _check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay!r}")
        _check(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "beta1 and beta2 must be in [0, 1)")
        _check(self.adam_eps > 0, f"adam_eps must be > 0, got {self.adam_eps!r}")
        _check(self.grad_clip >= 0, f"grad_clip must be >= 0, got {self.grad_clip!r}")
        _check(self.peak_tflops >= 0, f"peak_tflops must be >= 0, got {self.peak_tflops!r}")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run: preset name, model and training configuration."""

    preset: str
    model: ModelConfig
    train: TrainConfig

    @property
    def seq_len(self) -> int:
        return self.train.seq_len or self.model.max_seq_len

    def to_dict(self) -> dict:
        return {
            "preset": self.preset,
            "model": dataclasses.asdict(self.model),
            "train": dataclasses.asdict(self.train),
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> RunConfig:
        return cls(
            preset=d["preset"], model=ModelConfig(**d["model"]), train=TrainConfig(**d["train"])
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def describe(self) -> str:
        """Human-readable summary printed at the start of a run."""
        lines = [f"preset {self.preset}: {self.model.num_params() / 1e6:.1f}M parameters"]
        for section in ("model", "train"):
            fields = dataclasses.asdict(getattr(self, section))
            lines.append(f"  {section}: " + ", ".join(f"{k}={v}" for k, v in fields.items()))
        return "\n".join(lines)


def _ffn(d_model: int) -> int:
    return int(d_model * 8 / 3)


# Presets: (model, training defaults). Sizes follow SlimPajama-DC/BTLM; 7b is LLaMA-7B-shaped
# (it needs several GPUs: fp32 weights + AdamW state alone are ~80 GB).
PRESETS: dict[str, tuple[ModelConfig, TrainConfig]] = {
    "tiny": (
        ModelConfig(
            vocab_size=4096,
            d_model=128,
            n_layers=4,
            n_heads=4,
            d_ff=352,
            max_seq_len=256,
            dtype="float32",
            remat="none",
        ),
        TrainConfig(
            global_batch=16,
            steps=300,
            lr=3e-3,
            warmup_steps=30,
            log_every=10,
            eval_every=100,
            checkpoint_every=100,
            run_dir="runs/tiny",
        ),
    ),
    "125m": (
        ModelConfig(d_model=768, n_layers=12, n_heads=12, d_ff=_ffn(768), remat="dots"),
        TrainConfig(
            global_batch=256,
            microbatches=8,  # 32 sequences per microbatch (one GPU)
            steps=50_000,
            lr=6e-4,
            warmup_steps=2000,
            run_dir="runs/125m",
            eval_every=1000,
            checkpoint_every=1000,
        ),
    ),
    "350m": (
        ModelConfig(d_model=1024, n_layers=24, n_heads=16, d_ff=_ffn(1024), remat="dots"),
        TrainConfig(
            global_batch=256,
            microbatches=16,  # 16 sequences per microbatch (one GPU)
            steps=100_000,
            lr=3e-4,
            warmup_steps=2000,
            run_dir="runs/350m",
            eval_every=1000,
            checkpoint_every=1000,
        ),
    ),
    "1.3b": (
        ModelConfig(
            d_model=2048,
            n_layers=24,
            n_heads=16,
            d_ff=5461,
            remat="dots_attention",  # 8 × 2048 tokens per GPU fit an 80 GB H100; `full` needs less
        ),
        TrainConfig(
            global_batch=512,
            microbatches=64,  # 8 sequences per microbatch (one GPU)
            steps=57_000,  # ≈ 60B tokens, the SlimPajama-DC 1.3B budget
            lr=2e-4,
            warmup_steps=2000,
            run_dir="runs/1.3b",
            eval_every=1000,
            checkpoint_every=1000,
        ),
    ),
    "7b": (
        ModelConfig(d_model=4096, n_layers=32, n_heads=32, d_ff=11008),
        TrainConfig(
            global_batch=1024,
            microbatches=512,  # 2 sequences per microbatch (one GPU)
            steps=250_000,
            lr=1.2e-4,
            warmup_steps=2000,
            run_dir="runs/7b",
            eval_every=1000,
            checkpoint_every=1000,
        ),
    ),
}

_MODEL_FIELDS = {f.name: f for f in dataclasses.fields(ModelConfig)}
_TRAIN_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
assert not set(_MODEL_FIELDS) & set(_TRAIN_FIELDS), "override keys must be unique"


def _parse_value(key: str, text: str) -> object:
    """Parses the command-line `text` for the config field `key` according to its type."""
    hint = typing.get_type_hints(ModelConfig if key in _MODEL_FIELDS else TrainConfig)[key]
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        if text not in choices:
            raise ValueError(f"--{key}: expected one of {choices}, got {text!r}")
        return text
    if hint is bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"--{key}: expected a boolean (true/false), got {text!r}")
    if hint is int:
        try:
            return int(text.replace("_", ""))
        except ValueError:
            raise ValueError(f"--{key}: expected an int, got {text!r}") from None
    if hint is float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"--{key}: expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"--{key}: expected a finite number, got {text!r}")
        return value
    if hint is str:
        return text
    raise TypeError(f"--{key}: unsupported field type {hint}")


def parse_overrides(args: Iterable[str]) -> dict[str, str]:
    """`["--key=value", ...]` -> `{key: value}`; unknown keys and malformed items are errors."""
    overrides: dict[str, str] = {}
    known = sorted(set(_MODEL_FIELDS) | set(_TRAIN_FIELDS) | {"preset"})
    for arg in args:
        if not arg.startswith("--") or "=" not in arg:
            raise ValueError(f"expected --key=value, got {arg!r}")
        key, value = arg[2:].split("=", 1)
        key = key.replace("-", "_")
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3)
            hint = f"; did you mean {', '.join('--' + c for c in close)}?" if close else ""
            raise ValueError(f"unknown config key --{key}{hint} (known keys: {', '.join(known)})")
        if key in overrides:
            raise ValueError(f"--{key} given twice")
        overrides[key] = value
    return overrides


def apply_overrides(config: RunConfig, overrides: Mapping[str, str | object]) -> RunConfig:
    """Returns `config` with fields replaced; string values are parsed by the field's type."""
    model_updates, train_updates = {}, {}
    for key, value in overrides.items():
        if key == "preset":
            continue
        if key in _MODEL_FIELDS:
            target = model_updates
        elif key in _TRAIN_FIELDS:
            target = train_updates
        else:
            raise ValueError(f"unknown config key {key!r}")
        target[key] = _parse_value(key, value) if isinstance(value, str) else value
    return RunConfig(
        preset=config.preset,
        model=dataclasses.replace(config.model, **model_updates),
        train=dataclasses.replace(config.train, **train_updates),
    )


def make_config(
    preset: str = "tiny", overrides: Mapping[str, str | object] | None = None
) -> RunConfig:
    """The preset's configuration with `overrides` applied (strings are parsed by field type)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    model, train = PRESETS[preset]
    return apply_overrides(RunConfig(preset=preset, model=model, train=train), overrides or {})


def describe_keys() -> str:
    """Every `--key=value` override with its type, the tiny preset's value and its comment."""
    lines = []
    for cls in (ModelConfig, TrainConfig):
        comments = dict(re.findall(r"^    (\w+): [^#\n]*#\s*(.*)$", inspect.getsource(cls), re.M))
        hints = typing.get_type_hints(cls)
        lines.append(f"{cls.__name__}:")
        for field in dataclasses.fields(cls):
            hint = hints[field.name]
            kind = (
                "|".join(typing.get_args(hint))
                if typing.get_origin(hint) is Literal
                else (hint.__name__)
            )
            lines.append(f"  --{field.name}  ({kind}) {comments.get(field.name, '')}".rstrip())
    return "\n".join(lines)


def config_from_args(args: Iterable[str]) -> RunConfig:
    """Builds a RunConfig from `--preset=NAME --key=value ...` command-line arguments."""
    overrides = parse_overrides(args)
    return make_config(overrides.get("preset", "tiny"), overrides)
