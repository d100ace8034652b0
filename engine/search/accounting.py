"""Bytes and bits per weight: what each unit costs under each candidate, and what a budget allows.

A unit's cost is what its format stores (kernels/: codes, scales and zero points, from the
format's `nbytes`), so W4A16 g64 symmetric costs 4 + 16/64 = 4.25 bits per weight. Kept units
cost the target's float dtype. Bits per weight average over the searched units' weights;
weight bytes are the plan's total (embeddings, norms, biases and unsearched layers included),
as `qrecipe plan` prints it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..models.describe import ModelInfo, dtype_bytes
from ..targets import Target
from .candidates import Candidate
from .units import Unit


@dataclass(frozen=True)
class Option:
    candidate: Candidate
    nbytes: int


def unit_options(units: list[Unit], candidates: list[Candidate], target: Target
                 ) -> tuple[dict[str, list[Option]], list[str]]:
    """Per unit, the candidates it can hold with their bytes; notes say which were left out where."""
    elem = dtype_bytes(target.dtype)
    options: dict[str, list[Option]] = {}
    left_out: dict[str, tuple[int, str]] = {}
    for u in units:
        opts = []
        for c in candidates:
            why = next((r for li in u.layers if (r := c.check(li.out_features, li.in_features))), None)
            if why:
                n, first_why = left_out.get(c.label, (0, why))
                left_out[c.label] = (n + 1, first_why)
                continue
            opts.append(Option(c, sum(c.nbytes(li.out_features, li.in_features, elem) for li in u.layers)))
        if not opts:
            from ..errors import ConfigError

            raise ConfigError(f"search.candidates: none of them can store {u.name} ({u.layers[0].out_features}x"
                              f"{u.in_features}); add one that can, e.g. keep or W8A16")
        options[u.name] = opts
    notes = [f"{label}: not for {n} unit(s) ({why})" for label, (n, why) in left_out.items()]
    return options, notes


def fixed_bytes(info: ModelInfo, units: list[Unit], target: Target) -> int:
    """The plan bytes no choice changes: embeddings and norms, biases, layers not searched."""
    elem = dtype_bytes(target.dtype)
    searched = {li.name for u in units for li in u.layers}
    total = info.other_params * elem
    for li in info.linears:
        bias = li.out_features * elem if li.bias else 0
        if li.name in searched:
            total += bias
        elif li.name != info.tied_lm_head:
            total += li.numel * elem + bias
    return total


def bits_per_weight(nbytes: float, numel: int) -> float:
    return 8.0 * nbytes / numel if numel else 0.0
