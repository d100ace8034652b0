"""Running statistics of the inputs of linear layers, gathered while a block runs on the
calibration batch.

Layers that read one tensor (q/k/v after the input norm, gate/up after the post-attention
norm; see families.PAIRINGS) share one `InputStats`, so the Gram matrix of that input is
accumulated once, not once per layer. Each algorithm asks for the statistics it needs:
"hessian" (the mean of x x^T: GPTQ, and AWQ's exact output error), "abs_mean" (AWQ's
activation salience), "absmax" (the per-channel max |x| of each calibration window:
SmoothQuant and static activation scales), "sample"
(the first SAMPLE_TOKENS input rows, for searches that must quantize activations; the
calibration windows are shuffled, so the first rows are a fair sample) and "float_cross"
(E[x x~^T], the float model's input x against the quantized model's input x~ at the same
positions: the driver then runs each block on both streams, the float one first; GPTQ's
float_targets).
"""

from __future__ import annotations

import torch
from torch import nn

STAT_KINDS = ("hessian", "abs_mean", "absmax", "sample", "float_cross")
SAMPLE_TOKENS = 4096


class InputStats:
    def __init__(self, in_features: int, kinds: set[str], device: torch.device):
        self.in_features = in_features
        self.kinds = frozenset(kinds)
        self.tokens = 0
        self._xtx = torch.zeros(in_features, in_features, device=device) if "hessian" in kinds else None
        self._abs_sum = torch.zeros(in_features, device=device, dtype=torch.float64) if "abs_mean" in kinds else None
        self._window_absmax: list[torch.Tensor] | None = [] if "absmax" in kinds else None
        self._sample: list[torch.Tensor] | None = [] if "sample" in kinds else None
        self._sampled = 0
        self._cross = torch.zeros(in_features, in_features, device=device) if "float_cross" in kinds else None
        self._float_inputs: dict[int, torch.Tensor] = {}  # batch -> the float stream's input, awaiting its pair
        # False once a batch's float and quantized inputs were not the same tokens (a routed
        # expert receives different tokens in the two models): the cross moment is then unusable
        self.cross_paired = True
        self._mean = False  # _xtx holds the mean (hessian was read), no longer the running sum

    def observe_float(self, x: torch.Tensor, batch: int) -> None:
        """The float model's input for calibration batch `batch` (update() sees its pair next)."""
        if self._cross is not None:
            self._float_inputs[batch] = x.detach().reshape(-1, self.in_features).to(torch.float32)

    def update(self, x: torch.Tensor, batch: int = 0) -> None:
        if self._mean:
            raise RuntimeError("InputStats.update after its hessian was read")
        x = x.detach()
        x2 = x.reshape(-1, self.in_features).to(torch.float32)
        self.tokens += x2.shape[0]
        if self._xtx is not None:
            self._xtx.addmm_(x2.T, x2)
        if self._cross is not None:
            xf = self._float_inputs.pop(batch, None)
            if xf is None or xf.shape != x2.shape:
                self.cross_paired = False
            else:
                self._cross.addmm_(xf.T, x2)
        if self._abs_sum is not None:
            self._abs_sum += x2.abs().sum(dim=0, dtype=torch.float64)
        if self._window_absmax is not None:  # [windows, K]: one row per sequence of the batch
            windows = x.reshape(-1, x.shape[-2], self.in_features) if x.dim() > 2 else x2[None]
            self._window_absmax.append(windows.abs().amax(dim=1).to(torch.float32))
        if self._sample is not None and self._sampled < SAMPLE_TOKENS:
            rows = x2[:SAMPLE_TOKENS - self._sampled].clone()
            self._sample.append(rows)
            self._sampled += rows.shape[0]

    @property
    def hessian(self) -> torch.Tensor:
        """E[x x^T] over the calibration tokens [K, K] (float32), not to be written to. The first
        read turns the running sum into the mean in place: one K x K matrix is kept, not two
        (a down_proj of Llama-3-8B: K = 14336, 822 MB each)."""
        if not self._mean:
            self._xtx.div_(max(self.tokens, 1))
            self._mean = True
        return self._xtx

    @property
    def cross(self) -> torch.Tensor:
        """E[x x~^T] [K, K]: float-model inputs x against quantized-model inputs x~ (float32);
        meaningful only while cross_paired."""
        return self._cross / max(self.tokens, 1)

    @property
    def window_absmax(self) -> torch.Tensor:
        """Per-channel max |x| of each calibration window [W, K] (float32)."""
        return torch.cat(self._window_absmax) if self._window_absmax else torch.zeros(0, self.in_features)

    @property
    def absmax(self) -> torch.Tensor:
        """Per-channel max |x| over all calibration tokens [K] (float32)."""
        w = self.window_absmax
        return w.amax(dim=0) if w.shape[0] else torch.zeros(self.in_features)

    @property
    def sample(self) -> torch.Tensor:
        """Up to SAMPLE_TOKENS input rows [M, K] (float32)."""
        return torch.cat(self._sample) if self._sample else torch.zeros(0, self.in_features)

    @property
    def abs_mean(self) -> torch.Tensor:
        """E[|x|] per input channel [K] (float32)."""
        return (self._abs_sum / max(self.tokens, 1)).to(torch.float32)


def share_groups(names: list[str], shared: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Partition `names` into groups that read one input: each tuple of `shared` (restricted
    to `names`) is a group, every other name is a group of its own."""
    groups, seen = [], set()
    for group in shared:
        present = tuple(n for n in group if n in names and n not in seen)
        if present:
            groups.append(present)
            seen.update(present)
    groups += [(n,) for n in names if n not in seen]
    return groups


class Stream:
    """Which stream and calibration batch the block is running on (float_cross: per batch, the
    float stream goes first, then the quantized one)."""

    def __init__(self) -> None:
        self.float = False
        self.batch = 0


def _observe(s: InputStats, x: torch.Tensor, stream: Stream) -> None:
    with torch.autocast(x.device.type, enabled=False):  # statistics in float32 under calib.precision=bfloat16
        if stream.float:
            s.observe_float(x, stream.batch)
        else:
            s.update(x, stream.batch)


def attach_stats(modules: dict[str, nn.Linear], needs: dict[str, set[str]], shared: list[tuple[str, ...]],
                 stream: Stream | None = None
                 ) -> tuple[dict[str, InputStats], list[torch.utils.hooks.RemovableHandle]]:
    """One InputStats per input group, observed by a pre-hook on the group's first layer.

    `needs` maps a layer name to the statistics its algorithm wants; a group collects the
    union. While `stream.float` is set, inputs are the float stream's (observe_float).
    Returns (stats by layer name, hook handles to remove)."""
    stream = stream or Stream()
    stats: dict[str, InputStats] = {}
    handles = []
    for group in share_groups([n for n in modules if needs.get(n)], shared):
        kinds = set().union(*(needs[n] for n in group))
        first = modules[group[0]]
        s = InputStats(first.in_features, kinds, first.weight.device)
        handles.append(first.register_forward_pre_hook(lambda _m, args, s=s: _observe(s, args[0], stream)))
        for n in group:
            stats[n] = s
    return stats, handles
