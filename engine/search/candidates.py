"""Candidates: the ways the search may store one unit, written `SCHEME[:gN|:channel][:asym][:ALGORITHM]`.

    keep              the unit stays in the target's float dtype
    W8A16             int8 weights, per-channel scales (the scheme's defaults)
    W4A16:g64         int4 weights, symmetric groups of 64
    W4A16:g32:asym    ... asymmetric (integer zero points)
    W4A16:g64:gptq    ... quantized by GPTQ instead of the search's default algorithm
    FP8, W8A8         weights and activations (the target must have fp8 / int8)

The default set is keep, W8A16 and W4A16 g128/g64/g32, plus FP8 where the target has fp8.
A candidate a unit cannot hold (a group that does not divide its in_features) is left out
for that unit only (`Candidate.check`), and said so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...kernels import QuantParams
from ..errors import ConfigError
from ..schemes import SCHEMES, Scheme
from ..targets import Target

KEEP = "keep"
DEFAULT_CANDIDATES = ("keep", "W8A16", "W4A16:g128", "W4A16:g64", "W4A16:g32")
TARGET_CANDIDATES = (("fp8", "FP8"),)  # (capability, candidate) added to the default set where the target has it


@dataclass(frozen=True)
class Candidate:
    scheme: str  # a SCHEMES name; "keep" for float
    group_size: int | None = None  # None: per-channel
    symmetric: bool = True
    activation: str = "none"
    algorithm: str = "rtn"
    args: tuple[tuple[str, Any], ...] = field(default=(), compare=True)

    @property
    def keeps(self) -> bool:
        return self.scheme == KEEP

    @property
    def label(self) -> str:
        """The canonical spelling (also the key in the sensitivity cache)."""
        if self.keeps:
            return KEEP
        parts = [self.scheme]
        s = SCHEMES[self.scheme]
        if s.group_sizes:
            parts.append("channel" if self.group_size is None else f"g{self.group_size}")
        if not self.symmetric:
            parts.append("asym")
        if self.activation not in ("none", s.default_activation):
            parts.append(self.activation)
        if self.algorithm != "rtn":
            parts.append(self.algorithm)
        text = ":".join(parts)
        if self.args:
            text += "(" + ",".join(f"{k}={v}" for k, v in self.args) + ")"
        return text

    @property
    def slug(self) -> str:
        """For rule names: w4a16_g64_asym."""
        return self.label.split("(")[0].lower().replace(":", "_")

    @property
    def params(self) -> QuantParams:
        return QuantParams(group_size=self.group_size, symmetric=self.symmetric, activation=self.activation)

    @property
    def scheme_obj(self) -> Scheme:
        return SCHEMES[self.scheme]

    def check(self, out_features: int, in_features: int) -> str | None:
        """Why a layer of this shape cannot be stored so, or None."""
        if self.keeps:
            return None
        return self.scheme_obj.weight_format.check(out_features, in_features, self.params)

    def nbytes(self, out_features: int, in_features: int, float_bytes: int) -> int:
        """Stored bytes of one layer's weight (scales and zeros included; bias excluded)."""
        if self.keeps:
            return out_features * in_features * float_bytes
        return self.scheme_obj.weight_format.nbytes(out_features, in_features, self.params)

    def rule_fields(self) -> dict[str, Any]:
        """The recipe fields that state this candidate (recipe_writer.py)."""
        if self.keeps:
            return {"scheme": "BF16"}
        s = self.scheme_obj
        out: dict[str, Any] = {"scheme": self.scheme,
                               "group_size": "channel" if self.group_size is None else self.group_size,
                               "symmetric": self.symmetric, "algorithm": self.algorithm}
        if s.activation_modes:
            out["activation"] = self.activation
        if self.args:
            out["args"] = {k: _thaw(v) for k, v in self.args}
        return out


def _thaw(value: Any) -> Any:
    return [_thaw(v) for v in value] if isinstance(value, tuple) else value


def _frozen(value: Any) -> Any:
    """Lists as tuples, as a recipe's Policy holds its args (so a plan's args compare equal)."""
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), _frozen(v)) for k, v in value.items()))
    return value


def parse_candidate(text: Any, where: str, algorithm: str = "rtn", args: dict[str, Any] | None = None) -> Candidate:
    """`W4A16:g64:asym:gptq` -> Candidate; `algorithm`/`args` apply when the text names no algorithm."""
    from ..algorithms import ALGORITHMS

    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{where}: expected a candidate such as W4A16:g64 or keep, got {text!r}")
    parts = [p.strip() for p in text.strip().split(":")]
    head = parts[0]
    if head.lower() == KEEP:
        if len(parts) > 1:
            raise ConfigError(f"{where}: {text!r}: keep takes no options; write keep")
        return Candidate(KEEP)
    scheme = SCHEMES.get(head.upper())
    if scheme is None or scheme.keeps_float:
        raise ConfigError(f"{where}: {text!r}: unknown scheme {head!r}; candidates are keep or one of "
                          f"{', '.join(n for n, s in SCHEMES.items() if not s.keeps_float)} with options "
                          f"(e.g. W4A16:g64:asym)")
    group, symmetric, activation, algo, explicit_algo = scheme.default_group_size, True, scheme.default_activation, \
        algorithm, False
    for opt in parts[1:]:
        low = opt.lower()
        if low == "channel":
            group = None
        elif low.startswith("g") and low[1:].isdigit():
            group = int(low[1:])
            if group not in scheme.group_sizes:
                allowed = ", ".join(f"g{g}" for g in scheme.group_sizes) or "none"
                raise ConfigError(f"{where}: {text!r}: {scheme.name} takes group sizes {allowed} or channel")
        elif low in ("asym", "sym"):
            symmetric = low == "sym"
            if not symmetric and not scheme.asymmetric_ok:
                raise ConfigError(f"{where}: {text!r}: {scheme.name} is symmetric only; remove :asym")
        elif low in scheme.activation_modes:
            activation = low
        elif low in ALGORITHMS:
            algo, explicit_algo = low, True
        else:
            raise ConfigError(f"{where}: {text!r}: unknown option {opt!r}; options are gN, channel, asym, "
                              f"{'/'.join(scheme.activation_modes) + ', ' if scheme.activation_modes else ''}"
                              f"or an algorithm ({', '.join(ALGORITHMS)})")
    algo_args = {} if explicit_algo else dict(args or {})
    cls = ALGORITHMS[algo]
    if not cls.applies_to(scheme.weight_format):
        fits = [name for name, a in ALGORITHMS.items() if a.applies_to(scheme.weight_format)]
        raise ConfigError(f"{where}: {text!r}: {algo} does not apply to {scheme.name}; algorithms for {scheme.name}: "
                          f"{', '.join(fits)}")
    from ..errors import RecipeError

    try:
        cls.check_args(algo_args, f"{where} args")
    except RecipeError as e:
        raise ConfigError(str(e)) from None
    return Candidate(scheme.name, group, symmetric, activation, algo,
                     tuple(sorted((str(k), _frozen(v)) for k, v in algo_args.items())))


def candidate_set(texts: tuple[str, ...] | None, target: Target, algorithm: str, args: dict[str, Any],
                  where: str = "search.candidates") -> tuple[list[Candidate], list[str]]:
    """(candidates, notes). None means the default set for the target; a candidate whose
    scheme the target lacks is refused when asked for, and left out (with a note) by default."""
    notes: list[str] = []
    default = texts is None
    if default:
        texts = DEFAULT_CANDIDATES + tuple(c for cap, c in TARGET_CANDIDATES if cap in target.capabilities)
        skipped = [c for cap, c in TARGET_CANDIDATES if cap not in target.capabilities]
        if skipped:
            notes.append(f"{', '.join(skipped)} left out: target {target.name} lacks "
                         f"{', '.join(cap for cap, c in TARGET_CANDIDATES if c in skipped)}")
    if not texts:
        raise ConfigError(f"{where}: empty; list at least two candidates, e.g. [W8A16, W4A16:g64]")
    out: list[Candidate] = []
    for i, text in enumerate(texts):
        c = parse_candidate(text, f"{where}[{i}]", algorithm, args)
        if not c.keeps:
            missing = target.lacks(c.scheme_obj.requires)
            if missing:
                raise ConfigError(f"{where}[{i}]: {c.label} needs {', '.join(missing)}, which target {target.name} "
                                  f"lacks; remove it or choose a target that has it")
        if c in out:
            raise ConfigError(f"{where}[{i}]: {c.label} is listed twice; list each candidate once")
        out.append(c)
    if len(out) < 2:
        raise ConfigError(f"{where}: one candidate leaves nothing to choose; list at least two")
    return out, notes
