"""Quantize a loaded model per its plan: each planned layer goes through its algorithm and
is swapped for a QuantLinear holding packed weights, one layer at a time so the float
weight is freed as soon as its quantized copy exists. A mixture-of-experts layer's expert
tensors are quantized expert by expert (per-expert linears that view the fused tensors) and
become one QuantExperts module once both tensors are done.

When any planned layer needs calibration data (AWQ, GPTQ, SmoothQuant, or static
activation scales), every planned layer goes through the block-by-block calibration
driver, RTN layers included, so each block is calibrated on the inputs the quantized
blocks before it really produce.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from .algorithms import LayerTask, get_algorithm, scale_tuning_of
from .config.settings import CalibSpec
from .models.families import moe_layout
from .modules import PackedExperts, QuantExperts, QuantLinear, UnfusedExperts, concat_rows, get_module, set_module
from .plan import LayerPlan, Plan
from .progress import progress_bar
from .schemes import SCHEMES

log = logging.getLogger(__name__)

TUNE_WINDOWS_PER_STEP = 2  # calibration windows per step of the end-to-end scale tuning (quant/tune.py)


@dataclass
class QuantReport:
    seconds: float
    layers: int
    notes: list[str] = field(default_factory=list)
    calibration_tokens: int = 0  # 0: no layer needed calibration data
    # experts module -> calibration tokens the router sent each expert (calibrated experts only)
    expert_tokens: dict[str, list[int]] = field(default_factory=dict)
    block_seconds: list[float] = field(default_factory=list)  # per block, when streamed


def layer_task(model: nn.Module, lp) -> LayerTask:
    module = get_module(model, lp.name)
    if not isinstance(module, nn.Linear):
        raise TypeError(f"plan layer {lp.name} is a {type(module).__name__} in the loaded model, not nn.Linear")
    return LayerTask(lp.name, module, SCHEMES[lp.scheme], lp.quant_params(), dict(lp.args))


def swap_in(model: nn.Module, task: LayerTask, qw) -> QuantLinear:
    q = QuantLinear.from_quantized(task.module, task.scheme.name, task.params, qw)
    set_module(model, task.name, q)
    return q


@dataclass
class _ExpertsBuild:
    """One experts module on its way to a QuantExperts: unfused in the model, its tasks' results
    gathered until every expert of both tensors has one."""

    name: str
    unfused: UnfusedExperts
    plans: dict[str, LayerPlan]  # "gate_up" / "down" -> its planned tensor
    results: dict[str, object] = field(default_factory=dict)
    tasks: dict[str, LayerTask] = field(default_factory=dict)

    PARTS = {"gate_up": ("gate_proj", "up_proj"), "down": ("down_proj",)}

    def make_tasks(self, part: str, min_tokens: int) -> list[LayerTask]:
        lp = self.plans[part]
        out = []
        for e, expert in enumerate(self.unfused):
            for proj in self.PARTS[part]:
                t = LayerTask(f"{self.name}.{e}.{proj}", getattr(expert, proj), SCHEMES[lp.scheme], lp.quant_params(),
                              dict(lp.args), min_tokens=min_tokens)
                self.tasks[t.name] = t
                out.append(t)
        return out

    def put(self, task: LayerTask, qw) -> bool:
        """Record a result; True once every expert of both tensors has one."""
        self.results[task.name] = qw
        expected = len(self.unfused) * sum(len(p) for p in self.PARTS.values())
        return len(self.results) == expected

    def module(self) -> QuantExperts:
        weight = self.unfused[0].gate_proj.weight
        n = len(self.unfused)

        def packed(part: str, weights) -> PackedExperts:
            lp = self.plans[part]
            return PackedExperts.from_quantized(weights, lp.in_features, lp.out_features, lp.scheme,
                                                lp.quant_params(), weight.dtype, weight.device)

        gate_up = [concat_rows([self.results[f"{self.name}.{e}.{p}"] for p in self.PARTS["gate_up"]]) for e in range(n)]
        down = [self.results[f"{self.name}.{e}.down_proj"] for e in range(n)]
        return QuantExperts(packed("gate_up", gate_up), packed("down", down), self.unfused.act_fn)

    def tokens(self) -> list[int] | None:
        """Calibration tokens each expert saw (its gate and up read them), where counted."""
        seen = [self.tasks[f"{self.name}.{e}.gate_proj"].tokens_seen for e in range(len(self.unfused))]
        return None if any(t is None for t in seen) else seen


class Units:
    """The plan's quantized units as algorithm tasks, and their results as modules in the model:
    a linear becomes a QuantLinear at once; an experts module is unfused into per-expert
    linears when its tasks are first made and becomes a QuantExperts when all are done."""

    def __init__(self, model: nn.Module, plan: Plan, min_expert_tokens: int = CalibSpec.min_expert_tokens):
        self.model, self.plan, self.min_expert_tokens = model, plan, min_expert_tokens
        self.builds: dict[str, _ExpertsBuild] = {}
        self.owner: dict[str, _ExpertsBuild] = {}
        self.expert_tokens: dict[str, list[int]] = {}
        self.notes: list[str] = []

    def _build(self, module_name: str) -> _ExpertsBuild:
        if module_name in self.builds:
            return self.builds[module_name]
        layout = moe_layout(self.plan.model_type)
        planned = {lp.name: lp for lp in self.plan.quantized()}
        names = {"gate_up": f"{module_name}.{layout.gate_up}", "down": f"{module_name}.{layout.down}"}
        missing = [n for n in names.values() if n not in planned]
        if missing:
            raise ValueError(f"plan quantizes only some tensors of {module_name} ({', '.join(missing)} is not); "
                             f"a QuantExperts module holds both quantized")
        unfused = UnfusedExperts(get_module(self.model, module_name), layout)
        set_module(self.model, module_name, unfused)
        build = _ExpertsBuild(module_name, unfused, {part: planned[n] for part, n in names.items()})
        self.builds[module_name] = build
        return build

    def tasks(self, model: nn.Module, lp: LayerPlan) -> list[LayerTask]:
        if lp.kind != "experts":
            return [layer_task(model, lp)]
        module_name, _, tensor = lp.name.rpartition(".")
        build = self._build(module_name)
        part = next(p for p, x in build.plans.items() if x.name == lp.name)
        tasks = build.make_tasks(part, self.min_expert_tokens)
        self.owner.update({t.name: build for t in tasks})
        return tasks

    def __call__(self, task: LayerTask, qw) -> None:
        build = self.owner.pop(task.name, None)
        if build is None:
            swap_in(self.model, task, qw)
            return
        if build.put(task, qw):
            set_module(self.model, build.name, build.module())
            del self.builds[build.name]
            tokens = build.tokens()
            if tokens is not None:
                self.expert_tokens[build.name] = tokens
                self.notes.append(_tokens_note(build.name, tokens, self.min_expert_tokens))


def _tokens_note(name: str, tokens: list[int], minimum: int) -> str:
    low = [str(e) for e, t in enumerate(tokens) if t < minimum]
    ordered = sorted(tokens)
    where = f"; below calib.min_expert_tokens={minimum}: experts {', '.join(low)} (each one's fallback is noted)" \
        if low else f"; none below calib.min_expert_tokens={minimum}"
    return (f"{name}: its {len(tokens)} experts saw {ordered[0]:,} to {ordered[-1]:,} calibration tokens "
            f"(median {ordered[len(ordered) // 2]:,}){where}")


def untie_quantized_head(model: nn.Module, plan: Plan) -> None:
    """A quantized lm_head no longer shares the embedding: say so in the config, so loading
    the checkpoint does not tie them back."""
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if isinstance(out, QuantLinear):
        model.config.tie_word_embeddings = False
        if hasattr(model.config, "get_text_config"):
            model.config.get_text_config().tie_word_embeddings = False


def _tune(model: nn.Module, plan: Plan, tuning, windows: torch.Tensor, targets, batch: int, precision: str,
          progress: bool) -> list[str]:
    """Run the plan's scale tuning on the quantized model; its notes."""
    from .quant.tune import tunable, tune_scales, tuning_steps

    names, epochs, lr = tuning
    units = {lp.name: lp for lp in plan.quantized()}
    modules = {name: get_module(model, name) for name in names if units[name].kind != "experts"}
    chosen = [name for name, m in modules.items() if isinstance(m, QuantLinear) and tunable(m)]
    notes = []
    left = sorted(set(names) - set(chosen))
    if left:
        notes.append(f"tune_epochs: {len(left)} layers are not integer weight-only linears (FP8, activation-quantized "
                     f"or experts); their scales were not tuned: {', '.join(left[:4])}{' ...' if len(left) > 4 else ''}")
    if not chosen:
        return notes
    steps = tuning_steps(windows.shape[0], epochs, batch)
    bar = progress_bar(total=steps, desc="tune scales", unit="step", enabled=progress)
    start = time.perf_counter()
    result = tune_scales(model, chosen, windows, targets, epochs, lr, windows_per_step=batch, precision=precision,
                         progress=bar)
    bar.close()
    verdict = f"kept the scales of pass {result.epoch} of {epochs}" if result.kept \
        else "not kept: no pass lowered it, so the given scales stay"
    notes.append(f"tune_epochs={epochs}: the group scales of {result.layers} layers were tuned end to end against the "
                 f"float model's next-token distribution; KL on the {result.held_out} held-out calibration windows "
                 f"{result.kl_before:.4g} -> {result.kl_after:.4g} ({verdict}; {time.perf_counter() - start:.0f} s)")
    return notes


def _windows(calibration: CalibSpec | torch.Tensor | None, tokenizer) -> tuple[torch.Tensor, int]:
    """(token windows, batch size); prepared windows run in batches of the default 8."""
    from .data import calibration_windows

    if isinstance(calibration, torch.Tensor):
        return calibration, CalibSpec.batch_size
    if calibration is None or tokenizer is None:
        raise ValueError("the plan has layers that need calibration: pass calibration (a CalibSpec) and tokenizer")
    return calibration_windows(tokenizer, calibration), calibration.batch_size


@torch.no_grad()
def quantize_model(model: nn.Module, plan: Plan, calibration: CalibSpec | torch.Tensor | None = None,
                   tokenizer=None, progress: bool = True, min_expert_tokens: int | None = None,
                   blocks=None, precision: str | None = None) -> QuantReport:
    """Quantize the plan's layers in place. `calibration` is the calib spec (windows are
    sampled with `tokenizer`) or the token windows themselves [samples, seq_len];
    `min_expert_tokens` and `precision` default to the spec's (calib.min_expert_tokens,
    calib.precision; float32 for prepared windows).

    `blocks`, a block provider (calibration/blocks.py), makes every layer go through the
    block-by-block driver, RTN-only plans included: a streamed run passes the one that reads
    each block from the checkpoint and writes it when done (`model` is then its skeleton)."""
    from .calibration import calibrate_and_quantize

    start = time.perf_counter()
    planned = plan.quantized()
    if min_expert_tokens is None:
        min_expert_tokens = calibration.min_expert_tokens if isinstance(calibration, CalibSpec) \
            else CalibSpec.min_expert_tokens
    if precision is None:
        precision = calibration.precision if isinstance(calibration, CalibSpec) else CalibSpec.precision
    units = Units(model, plan, min_expert_tokens)
    notes: list[str] = []
    tokens = 0
    tuning = scale_tuning_of(planned)
    if tuning is not None and blocks is not None:
        notes.append("tune_epochs: a streamed run holds no whole model in memory to tune end to end; "
                     "the group scales were not tuned")
        tuning = None
    if plan.calibrates or blocks is not None:
        windows, batch_size = _windows(calibration, tokenizer) if plan.calibrates else (None, CalibSpec.batch_size)
        tokens = windows.numel() if windows is not None else 0
        targets = None
        if tuning is not None:  # the float model's answers, before any layer changes
            from .quant.tune import float_hidden

            targets = float_hidden(model, windows, batch_size, precision)
        notes += calibrate_and_quantize(model, plan, planned, windows, batch_size, units.tasks, units,
                                        progress=progress, blocks=blocks, precision=precision)
        if tuning is not None:
            notes += _tune(model, plan, tuning, windows, targets, TUNE_WINDOWS_PER_STEP, precision, progress)
    else:
        for lp in progress_bar(planned, desc="quantize", unit="layer", enabled=progress):
            tasks = {t.name: t for t in units.tasks(model, lp)}
            algo = get_algorithm(lp.algorithm)(list(tasks.values()))
            for name, qw in algo.quantize().items():
                units(tasks[name], qw)
            notes += algo.notes
    untie_quantized_head(model, plan)
    return QuantReport(seconds=time.perf_counter() - start, layers=len(planned), notes=notes + units.notes,
                       calibration_tokens=tokens, expert_tokens=units.expert_tokens)


def prepare_model(model: nn.Module) -> dict[str, str]:
    """Bind every QuantLinear and expert tensor to its backend on its current device; the plan
    unit's name -> backend."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, QuantLinear):
            out[name] = m.prepare().name
        elif isinstance(m, QuantExperts):
            out.update({f"{name}.{tensor}": backend for tensor, backend in m.prepare().items()})
    return out
