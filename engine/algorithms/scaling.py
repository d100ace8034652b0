"""Per-channel input scaling shared by AWQ and SmoothQuant.

Both divide the input of a set of linears by a per-channel vector s and multiply the
linears' weight columns by s, which leaves the float model's function unchanged: the
division is folded into the module that produces the input (the norm's weight and bias,
or the producing linear's output rows). Which module feeds which linears is data
(engine/models/families.py PAIRINGS).
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import torch
from torch import nn

from ..models.families import pairings
from .base import Algorithm, BlockContext, LayerTask


@dataclass
class ScaleGroup:
    previous: str  # name inside the block
    producer: nn.Module
    tasks: list[LayerTask]


def _foldable(producer: nn.Module, in_features: int) -> str | None:
    """Why a division of `in_features` channels cannot be folded into `producer`, or None."""
    if isinstance(producer, nn.Linear):
        if producer.out_features != in_features:
            return (f"its {producer.out_features} outputs are not the {in_features} inputs "
                    f"(grouped-query attention)")
        return None
    weight = getattr(producer, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.shape != (in_features,):
        return f"it has no per-channel weight of {in_features} to fold a scale into"
    return None


def scale_groups(algorithm: str, tasks: list[LayerTask], context: BlockContext) -> tuple[list[ScaleGroup], list[str]]:
    """The pairings of this block whose consumers are all among `tasks` and whose producer
    can absorb the scales; notes say why the other tasks are left unscaled."""
    by_name = {t.name: t for t in tasks}
    groups, notes, placed = [], [], set()
    for pairing in pairings(context.model_type):
        names = [context.absolute(n) for n in pairing.layers]
        mine = [by_name[n] for n in names if n in by_name]
        if not mine:
            continue
        why = None
        if len(mine) != len(names):
            others = ", ".join(context.relative(n) for n in names if n not in by_name)
            why = f"{others} read the same input but are not quantized with {algorithm} (one rule should cover them)"
        else:
            try:
                producer = context.block.get_submodule(pairing.previous)
            except AttributeError:
                producer, why = None, "the block has no such module"
            if producer is not None:
                why = _foldable(producer, mine[0].module.in_features)
        if why is None:
            groups.append(ScaleGroup(pairing.previous, producer, mine))
            placed.update(t.name for t in mine)
        else:
            layers = "+".join(context.relative(t.name) for t in mine)
            notes.append(f"{algorithm}: {layers} not rescaled through {pairing.previous}: {why}")
    unpaired = [context.relative(t.name) for t in tasks if t.name not in placed
                and not any(t.name in [context.absolute(n) for n in p.layers] for p in pairings(context.model_type))]
    if unpaired:
        family = context.model_type or "this model"
        notes.append(f"{algorithm}: no scale pairing for {', '.join(unpaired)} in {family} "
                     f"(engine/models/families.py PAIRINGS); quantized without input scaling")
    return groups, notes


@torch.no_grad()
def fold_scales(group: ScaleGroup, s: torch.Tensor, context: BlockContext) -> None:
    """Divide the producer's output channels by s and multiply the consumers' inputs by s."""
    producer = group.producer
    if isinstance(producer, nn.Linear):
        producer.weight.copy_((producer.weight.float() / s[:, None]).to(producer.weight.dtype))
    else:
        producer.weight.copy_((producer.weight.float() / s).to(producer.weight.dtype))
    bias = getattr(producer, "bias", None)
    if isinstance(bias, torch.Tensor):
        bias.copy_((bias.float() / s).to(bias.dtype))
    for t in group.tasks:
        w = t.module.weight
        w.copy_((w.float() * s[None, :]).to(w.dtype))
        prior = context.input_divisors.get(t.name)
        context.input_divisors[t.name] = s if prior is None else prior * s


class InputScaling(Algorithm):
    """An algorithm whose transform rescales each pairing's input by searched scales."""

    def transform(self) -> None:
        groups, notes = scale_groups(self.name, self.tasks, self.context)
        self.notes += notes
        for group in groups:
            stats = self.context.stats[group.tasks[0].name]
            if stats.tokens == 0:
                layers = "+".join(self.context.relative(t.name) for t in group.tasks)
                self.notes.append(f"{self.name}: {layers} saw no calibration tokens; not rescaled")
                continue
            fold_scales(group, self.search_scales(group, stats), self.context)

    @abstractmethod
    def search_scales(self, group: ScaleGroup, stats) -> torch.Tensor:
        """Per-channel scales s [K] > 0 for the group's shared input."""
