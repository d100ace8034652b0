"""Per-channel input scaling shared by AWQ and SmoothQuant.

Both divide the input of a set of linears by a per-channel vector s and multiply the
linears' weight columns by s, which leaves the float model's function unchanged: the
division is folded into the module that produces the input (the norm's weight and bias,
or the producing linear's output rows). Which module feeds which linears is data
(engine/models/families.py PAIRINGS).
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field

import torch
from torch import nn

from .base import Algorithm, BlockContext, LayerTask


@dataclass
class ScaleGroup:
    previous: str  # name inside the block
    producer: nn.Module
    tasks: list[LayerTask]
    passive: list[nn.Module] = field(default_factory=list)  # read the input too, not quantized (a router)

    def stats(self, context: BlockContext) -> list:
        """Each task's input statistics: one shared object for layers that read one tensor;
        one per expert for the experts of a MoE layer (each sees its routed tokens only)."""
        return [context.stats[t.name] for t in self.tasks]


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
    block_pairings = context.pairings()[0]
    for pairing in block_pairings:
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
            passive = []
            for name in pairing.passive if why is None else ():
                try:
                    module = context.block.get_submodule(name)
                except AttributeError:
                    why = f"{name}, which reads the same input, is missing"
                    break
                weight = getattr(module, "weight", None)
                if not isinstance(weight, torch.Tensor) or weight.shape[-1] != mine[0].module.in_features:
                    why = f"{name} reads the same input but has no weight whose columns can take the scales"
                    break
                passive.append(module)
        if why is None:
            groups.append(ScaleGroup(pairing.previous, producer, mine, passive))
            placed.update(t.name for t in mine)
        else:
            layers = "+".join(context.relative(t.name) for t in mine)
            notes.append(f"{algorithm}: {layers} not rescaled through {pairing.previous}: {why}")
    paired = {context.absolute(n) for p in block_pairings for n in p.layers}
    unpaired = [context.relative(t.name) for t in tasks if t.name not in placed and t.name not in paired]
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
    for module in group.passive:  # a router: its float logits are unchanged
        w = module.weight
        w.copy_((w.float() * s[None, :]).to(w.dtype))


class InputScaling(Algorithm):
    """An algorithm whose transform rescales each pairing's input by searched scales."""

    def transform(self) -> None:
        groups, notes = scale_groups(self.name, self.tasks, self.context)
        self.notes += notes
        for group in groups:
            stats = group.stats(self.context)
            # experts short of tokens still take the shared scale of their MoE layer (the fold must
            # reach every reader of the norm); a group all of whose readers are short is left alone
            short = [t.too_few_tokens(st) for t, st in zip(group.tasks, stats)]
            if all(short):
                layers = "+".join(self.context.relative(t.name) for t in group.tasks)
                self.notes.append(f"{self.name}: {layers} {short[0]}; not rescaled")
                continue
            fold_scales(group, self.search_scales(group, stats), self.context)

    @abstractmethod
    def search_scales(self, group: ScaleGroup, stats: list) -> torch.Tensor:
        """Per-channel scales s [K] > 0 for the group's shared input; `stats` holds each task's
        input statistics (group.stats)."""
