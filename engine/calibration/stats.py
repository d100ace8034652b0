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
# The Gram matrix x^T x is symmetric: it is accumulated in up to GRAM_STRIPS row strips of at least
# GRAM_STRIP_MIN rows, each only from the diagonal rightwards, so the blocks below the diagonal
# (the mirror of those above) are never computed (a third less work at K = 576 and 1536), and
# mirrored once when the Hessian is read.
GRAM_STRIPS = 4
GRAM_STRIP_MIN = 128


def _strip_rows(k: int) -> int:
    return max(GRAM_STRIP_MIN, -(-k // GRAM_STRIPS))


def add_gram(xtx: torch.Tensor, x: torch.Tensor) -> None:
    """xtx += x^T x on and above the diagonal blocks of its row strips (mirror_gram completes it)."""
    k, rows = x.shape[1], _strip_rows(x.shape[1])
    xt = x.T
    for i in range(0, k, rows):
        xtx[i:i + rows, i:].addmm_(xt[i:i + rows], x[:, i:])


def mirror_gram(xtx: torch.Tensor) -> None:
    """Fill the blocks below the diagonal that add_gram leaves out from their mirror image, in place
    (one strip at a time: no second K x K matrix)."""
    k = xtx.shape[0]
    rows = _strip_rows(k)
    for i in range(0, k, rows):
        xtx[i + rows:, i:i + rows] = xtx[i:i + rows, i + rows:].T


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
            add_gram(self._xtx, x2)
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
            mirror_gram(self._xtx)
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
    float stream goes first, then the quantized one).

    end_early: the caller discards the quantized stream's output, so once every input group has
    observed a batch the last hook raises StatsComplete and the rest of that forward is skipped
    (in a dense decoder block: its down_proj and what follows). Never on the float stream, whose
    outputs feed the next block, nor on a unit's first batch, which runs whole and must show each
    group observed exactly once: a module called twice a forward, or an expert the router sent no
    token, keeps every forward of the unit whole."""

    def __init__(self, end_early: bool = False) -> None:
        self.float = False
        self.batch = 0
        self.end_early = end_early


class StatsComplete(Exception):
    """Raised by a statistics hook once every input group has this batch (Stream.end_early)."""


class _Completion:
    """Which input groups have observed the current batch of the quantized stream (Stream.end_early)."""

    def __init__(self, groups: int, stream: Stream) -> None:
        self.groups, self.stream = groups, stream
        self.first: int | None = None  # the unit's first batch, run whole
        self.first_counts: dict[int, int] = {}
        self.batch: int | None = None
        self.seen: set[int] = set()
        self.once: bool | None = None  # whether the first batch observed each group exactly once

    def observed(self, s: InputStats) -> None:
        st = self.stream
        if st.float or not st.end_early:
            return
        if self.first is None:
            self.first = st.batch
        if st.batch == self.first:
            self.first_counts[id(s)] = self.first_counts.get(id(s), 0) + 1
            return
        if self.once is None:  # decided once, when the first batch is over
            self.once = len(self.first_counts) == self.groups and all(c == 1 for c in self.first_counts.values())
        if not self.once:
            return
        if st.batch != self.batch:
            self.batch, self.seen = st.batch, set()
        self.seen.add(id(s))
        if len(self.seen) == self.groups:
            raise StatsComplete


def record(s: InputStats, x: torch.Tensor, stream: Stream | None = None) -> None:
    """Observe one input of a group (the float stream's while `stream.float` is set), in float32
    also under calib.precision=bfloat16."""
    with torch.autocast(x.device.type, enabled=False):
        if stream is not None and stream.float:
            s.observe_float(x, stream.batch)
        else:
            s.update(x, 0 if stream is None else stream.batch)


def _observe(s: InputStats, x: torch.Tensor, stream: Stream, completion: _Completion) -> None:
    record(s, x, stream)
    completion.observed(s)


def input_stats(modules: dict[str, nn.Linear], needs: dict[str, set[str]], shared: list[tuple[str, ...]]
                ) -> tuple[dict[str, InputStats], list[tuple[str, ...]]]:
    """One InputStats per input group, not yet observing anything: (stats by layer name, the
    groups, each a tuple of layer names). `needs` maps a layer name to the statistics its
    algorithm wants; a group collects the union."""
    stats: dict[str, InputStats] = {}
    groups = share_groups([n for n in modules if needs.get(n)], shared)
    for group in groups:
        kinds = set().union(*(needs[n] for n in group))
        first = modules[group[0]]
        s = InputStats(first.in_features, kinds, first.weight.device)
        for n in group:
            stats[n] = s
    return stats, groups


def attach_stats(modules: dict[str, nn.Linear], needs: dict[str, set[str]], shared: list[tuple[str, ...]],
                 stream: Stream | None = None
                 ) -> tuple[dict[str, InputStats], list[torch.utils.hooks.RemovableHandle]]:
    """input_stats, each group observed by a pre-hook on its first layer.

    While `stream.float` is set, inputs are the float stream's (observe_float); with
    `stream.end_early` a hook may raise StatsComplete (Stream).
    Returns (stats by layer name, hook handles to remove)."""
    stream = stream or Stream()
    stats, groups = input_stats(modules, needs, shared)
    completion = _Completion(len(groups), stream)
    handles = []
    for group in groups:
        s = stats[group[0]]
        handles.append(modules[group[0]].register_forward_pre_hook(
            lambda _m, args, s=s: _observe(s, args[0], stream, completion)))
    return stats, handles
