"""Source mixtures: per-source *token* proportions, named presets and custom specs.

A spec is a preset name (``"DC-1"`` .. ``"DC-6"``, ``"SlimPajama"``, ``"RedPajama"``), a
comma-separated ``"RedPajamaCommonCrawl=0.8,RedPajamaGithub=0.2"`` string, or the path of a YAML
file holding a mapping ``{source: weight}`` (optionally under a top-level ``weights:`` key, with an
optional ``name:``). Weights are normalized to sum to 1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import yaml

from data.slimpajama import SOURCES

_CC, _C4, _GH, _BK, _AX, _WK, _SE = SOURCES


@dataclasses.dataclass(frozen=True)
class Mixture:
    """Per-source token proportions.

    Attributes:
      name: preset name or a label for a custom mixture.
      weights: ``(source, weight)`` pairs; sources from :data:`data.SOURCES`, weights >= 0, sum > 0.
      origin: where the proportions come from.
    """

    name: str
    weights: tuple[tuple[str, float], ...]
    origin: str = "custom"

    def __post_init__(self):
        seen = set()
        for source, w in self.weights:
            if source not in SOURCES:
                raise ValueError(
                    f"mixture {self.name!r}: unknown source {source!r}; known: {SOURCES}"
                )
            if source in seen:
                raise ValueError(f"mixture {self.name!r}: source {source!r} given twice")
            seen.add(source)
            if not isinstance(w, int | float) or w != w or w < 0 or w == float("inf"):
                raise ValueError(
                    f"mixture {self.name!r}: weight of {source} must be finite and >= 0, got {w!r}"
                )
        if sum(w for _, w in self.weights) <= 0:
            raise ValueError(f"mixture {self.name!r}: weights must not all be zero")

    @property
    def proportions(self) -> dict[str, float]:
        """Normalized weights of the sources with weight > 0, in :data:`SOURCES` order."""
        total = sum(w for _, w in self.weights)
        given = dict(self.weights)
        return {s: given[s] / total for s in SOURCES if given.get(s, 0) > 0}

    def check_available(self, tokens_per_source: Mapping[str, int]) -> None:
        """Raises ValueError if a source with weight > 0 has no tokens in the prepared data."""
        missing = [s for s in self.proportions if tokens_per_source.get(s, 0) <= 0]
        if missing:
            raise ValueError(
                f"mixture {self.name!r} needs {missing}, which have no tokens in the prepared data "
                f"(available: {sorted(s for s, n in tokens_per_source.items() if n > 0)})"
            )


_SLIMPAJAMA_SRC = (
    "SlimPajama-627B token proportions (Cerebras SlimPajama dataset card; SlimPajama-DC Table 1)"
)
_DC_SRC = "SlimPajama-DC (Shen et al., 2023), Table 2"

PRESETS: dict[str, Mixture] = {
    m.name: m
    for m in (
        Mixture("DC-1", ((_CC, 100.0),), _DC_SRC),
        Mixture("DC-2", ((_CC, 90.9), (_GH, 9.1)), _DC_SRC),
        Mixture("DC-3", ((_CC, 75.8), (_GH, 24.2)), _DC_SRC),
        Mixture("DC-4", ((_CC, 75.8), (_WK, 24.2)), _DC_SRC),
        Mixture(
            "DC-5",
            ((_CC, 75.8), (_GH, 8.1), (_BK, 8.1), (_WK, 8.0)),
            "UNCONFIRMED: SlimPajama-DC DC-5 is CommonCrawl with GitHub, Books and Wikipedia; "
            "the exact split is printed only in the paper's Table 2. Placeholder: CommonCrawl "
            "75.8 (as DC-3/DC-4) and the other 24.2 split evenly. Check against the paper "
            "before quoting results.",
        ),
        Mixture(
            "DC-6",
            ((_CC, 52.2), (_C4, 26.7), (_GH, 5.2), (_BK, 4.2), (_AX, 4.6), (_WK, 3.8), (_SE, 3.3)),
            _DC_SRC + " (DC-6 = all of SlimPajama)",
        ),
        Mixture(
            "SlimPajama",
            ((_CC, 52.2), (_C4, 26.7), (_GH, 5.2), (_BK, 4.2), (_AX, 4.6), (_WK, 3.8), (_SE, 3.3)),
            _SLIMPAJAMA_SRC,
        ),
        Mixture(
            "RedPajama",
            ((_CC, 72.6), (_C4, 14.4), (_GH, 4.9), (_BK, 2.1), (_AX, 2.3), (_WK, 2.0), (_SE, 1.7)),
            "RedPajama-1T token proportions (SlimPajama dataset card)",
        ),
    )
}


def parse_custom(spec: str, name: str | None = None) -> Mixture:
    """Parses ``"RedPajamaCommonCrawl=0.8,RedPajamaGithub=0.2"``."""
    pairs = []
    for item in spec.split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise ValueError(
                f"mixture spec item {item!r} must look like Source=weight (in {spec!r})"
            )
        source, weight = (x.strip() for x in item.split("=", 1))
        try:
            pairs.append((source, float(weight)))
        except ValueError:
            raise ValueError(
                f"mixture spec: weight of {source!r} is not a number: {weight!r}"
            ) from None
    if not pairs:
        raise ValueError(f"mixture spec {spec!r} names no source")
    return Mixture(name or spec, tuple(pairs))


def load_yaml(path: Path | str) -> Mixture:
    """Reads a mixture from YAML: ``{source: weight}`` or ``{name: ..., weights: {source:
    weight}}``."""
    path = Path(path)
    data = yaml.safe_load(path.read_text())
    name = str(path)
    if isinstance(data, dict) and "weights" in data:
        name = str(data.get("name", name))
        data = data["weights"]
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a non-empty mapping source -> weight")
    pairs = []
    for source, weight in data.items():
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise ValueError(f"{path}: weight of {source!r} must be a number, got {weight!r}")
        pairs.append((str(source), float(weight)))
    return Mixture(name, tuple(pairs), origin=f"YAML file {path}")


def get_mixture(spec: str | Path | Mixture) -> Mixture:
    """Resolves a preset name, a custom ``Source=weight,...`` string, a YAML path, or a Mixture."""
    if isinstance(spec, Mixture):
        return spec
    if not isinstance(spec, str | Path):
        raise TypeError(f"mixture must be a str, Path or Mixture, got {type(spec).__name__}")
    text = str(spec)
    if text in PRESETS:
        return PRESETS[text]
    if text.endswith((".yaml", ".yml")):
        return load_yaml(text)
    if "=" in text:
        return parse_custom(text)
    raise ValueError(
        f"unknown mixture {text!r}: use a preset {sorted(PRESETS)}, 'Source=w,...', or a .yaml path"
    )
