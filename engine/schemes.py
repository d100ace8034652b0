"""Quantization schemes as data: what a recipe's `scheme:` names.

A scheme fixes the weight format (a folder in kernels/), how activations are handled, which
group sizes and symmetries are allowed, and which target capabilities it needs to run
natively. `BF16`/`FP16` mean: keep the layer in floating point.
"""

from __future__ import annotations

from dataclasses import dataclass

WEIGHT_ONLY_GROUP_SIZES = (32, 64, 128)


@dataclass(frozen=True)
class Scheme:
    name: str
    format: str | None  # kernels/<format>; None keeps the layer in float
    weight_bits: int
    activation: str  # "float" (weight-only), "int8", "fp8"
    default_group_size: int | None  # None: per-channel
    group_sizes: tuple[int, ...]  # allowed besides per-channel; () means per-channel only
    asymmetric_ok: bool
    activation_modes: tuple[str, ...]  # () for weight-only; ("dynamic", "static") otherwise
    requires: frozenset[str]  # target capabilities needed to run natively

    @property
    def keeps_float(self) -> bool:
        return self.format is None

    @property
    def default_activation(self) -> str:
        return self.activation_modes[0] if self.activation_modes else "none"


def _keep(name: str) -> Scheme:
    return Scheme(name, None, 16, "float", None, (), False, (), frozenset())


SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in (
        _keep("BF16"),
        _keep("FP16"),
        Scheme("W8A16", "w8a16", 8, "float", None, WEIGHT_ONLY_GROUP_SIZES, True, (), frozenset()),
        Scheme("W4A16", "w4a16", 4, "float", 128, WEIGHT_ONLY_GROUP_SIZES, True, (), frozenset()),
        Scheme("W8A8", "w8a8", 8, "int8", None, (), False, ("dynamic", "static"), frozenset({"int8"})),
        Scheme("FP8", "fp8", 8, "fp8", None, (), False, ("dynamic", "static"), frozenset({"fp8"})),
    )
}


def get_scheme(name: str, field: str) -> Scheme:
    key = str(name).upper()
    if key not in SCHEMES:
        raise KeyError(f"{field}: unknown scheme {name!r}; choose one of {', '.join(SCHEMES)}")
    return SCHEMES[key]
