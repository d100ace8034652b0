"""Emulation: the format's torch reference numerics, for formats the local device cannot run
natively (FP8 on a CPU or a pre-Ada GPU). Quality is measured faithfully; speed is not."""

from __future__ import annotations

from .base import Backend


class EmulatedBackend(Backend):
    name = "emulated"
    emulated = True

    def supports(self, fmt, p, in_features, out_features, device, dtype):
        return True

    def linear(self, module, x):
        return module.format.reference_linear(x, module.packed(), module.params, module.bias)
