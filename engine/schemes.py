"""Quantization schemes as data: what a recipe's `scheme:` names.

A scheme names a weight format (a folder in kernels/) and the target capabilities it needs to
run natively; everything else about it (bits, how activations are handled, which group sizes
and symmetries it allows, its defaults) is a trait of its format and read from there.
`BF16`/`FP16` mean: keep the layer in floating point.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..kernels import WeightFormat, get_format


@dataclass(frozen=True)
class Scheme:
    name: str
    format: str | None  # kernels/<format>; None keeps the layer in float
    requires: frozenset[str]  # target capabilities needed to run natively

    @property
    def keeps_float(self) -> bool:
        return self.format is None

    @property
    def weight_format(self) -> WeightFormat:
        if self.format is None:
            raise ValueError(f"scheme {self.name} keeps layers in float; it has no weight format")
        return get_format(self.format)

    @property
    def weight_bits(self) -> int:
        return 16 if self.keeps_float else self.weight_format.weight_bits

    @property
    def activation(self) -> str:
        """"float" (weight-only, or kept), "int8" or "fp8"."""
        return "float" if self.keeps_float else self.weight_format.activation_dtype

    @property
    def default_group_size(self) -> int | None:
        return None if self.keeps_float else self.weight_format.default_group_size

    @property
    def group_sizes(self) -> tuple[int, ...]:
        return () if self.keeps_float else self.weight_format.group_sizes

    @property
    def asymmetric_ok(self) -> bool:
        return False if self.keeps_float else self.weight_format.asymmetric_ok

    @property
    def activation_modes(self) -> tuple[str, ...]:
        return () if self.keeps_float else self.weight_format.activation_modes

    @property
    def default_activation(self) -> str:
        return self.activation_modes[0] if self.activation_modes else "none"


SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in (
        Scheme("BF16", None, frozenset()),
        Scheme("FP16", None, frozenset()),
        Scheme("W8A16", "w8a16", frozenset()),
        Scheme("W4A16", "w4a16", frozenset()),
        Scheme("W8A8", "w8a8", frozenset({"int8"})),
        Scheme("FP8", "fp8", frozenset({"fp8"})),
    )
}


def get_scheme(name: str, field: str) -> Scheme:
    key = str(name).upper()
    if key not in SCHEMES:
        raise KeyError(f"{field}: unknown scheme {name!r}; choose one of {', '.join(SCHEMES)}")
    return SCHEMES[key]
