"""How much each unit suffers under each candidate, measured on a calibration slice.

exact   KL(baseline || model with that unit alone quantized, every other layer float), over
        the baseline's top-k tokens plus a tail bucket (evaluate/divergence.py), on the slice.
        Affordable because the float input of every block is computed once and cached: a unit
        in block b is measured by quantizing a copy of block b and running only blocks b..end
        (and the head) from block b's cached input.
proxy   from one pass: the unit's output error under the candidate, per output channel,
        e_j = E[dy_j^2] = (dW H dW^T)_jj with H = E[x x^T] of its input (the statistics the
        calibration driver gathers), and
          hessian  sum_j e_j                       (an output error; size budgets only)
          fisher   0.5 * sum_j F_j e_j             (a predicted KL, in nats)
        where F_j is the Fisher information of the unit's output channel j: the mean over the
        slice's tokens of the squared gradient of the model's log-likelihood of tokens sampled
        from its own predictions (one backward pass). KL(p || p + d) ~ 0.5 d^T F d, with F
        taken diagonal and the output error independent of the gradient's size.
Activation-quantizing candidates (W8A8, FP8) get e_j from a sample of real inputs run through
the quantized layer, since their error is not in dW alone.

Each candidate is quantized by its own algorithm (RTN, or a calibrated one on the block's
float inputs), with the calibration driver's `quantize_unit` on a copy of the block, so
transforms that fold scales into a norm never touch the model.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ..algorithms import BlockContext, LayerTask
from ..calibration.capture import BlockCall, capture_inputs, find_blocks, run_block, with_hidden
from ..calibration.driver import quantize_unit
from ..calibration.stats import attach_stats
from ..evaluate.divergence import TextReference, compare_pass, reference_pass
from ..modules import QuantLinear, get_module, set_module
from ..quant.grid import WeightGrid
from ..schemes import SCHEMES
from .cache import EXACT_KL, EXACT_NLL, FISHER, HESSIAN, Key
from .candidates import Candidate
from .units import Unit

Progress = Callable[[float, str], None]


def _hidden(call: BlockCall) -> torch.Tensor:
    args, kwargs = call
    return args[0] if args else kwargs["hidden_states"]


@dataclass
class Slice:
    """The calibration slice, the baseline's reference on it, and every block's float input."""

    windows: torch.Tensor
    batch_size: int
    reference: TextReference
    blocks_name: str
    blocks: nn.ModuleList
    calls: list[BlockCall]  # block 0's call per batch (its kwargs serve every block)
    inputs: list[list[torch.Tensor]] = field(default_factory=list)  # inputs[b][j]: float input of block b, batch j

    def call(self, b: int, j: int) -> BlockCall:
        return with_hidden(self.calls[j], self.inputs[b][j])


@torch.no_grad()
def build_slice(model: nn.Module, windows: torch.Tensor, batch_size: int, topk: int, cache_inputs: bool) -> Slice:
    """One float pass for the reference, one through the blocks for their inputs (all of them
    when `cache_inputs`, for the exact measurement; the proxy walks them one at a time)."""
    found = find_blocks(model)
    if found is None:
        from ..errors import ConfigError

        raise ConfigError("model: qrecipe search needs a decoder block list (engine/models/families.py BLOCK_LISTS); "
                          "this model has none it knows")
    blocks_name, blocks = found
    reference = reference_pass(model, windows, batch_size, topk, progress=False)
    calls = capture_inputs(model, blocks[0], windows, batch_size)
    slc = Slice(windows, batch_size, reference, blocks_name, blocks, calls, [[_hidden(c) for c in calls]])
    if cache_inputs:
        for b in range(len(blocks) - 1):
            slc.inputs.append([run_block(blocks[b], slc.call(b, j)) for j in range(len(calls))])
    return slc


def _tasks(root: nn.Module, prefix: str, unit: Unit, cand: Candidate) -> list[LayerTask]:
    rel = (lambda n: n[len(prefix) + 1:]) if prefix else (lambda n: n)
    return [LayerTask(li.name, get_module(root, rel(li.name)), SCHEMES[cand.scheme], cand.params, dict(cand.args))
            for li in unit.layers]


def quantize_in(root: nn.Module, prefix: str, model_type: str, unit: Unit, cand: Candidate,
                run_float: Callable[[nn.Module], None]) -> BlockContext:
    """Quantize the unit's layers inside `root` (a block copy, or the model) with the
    candidate's algorithm; run_float(root) feeds it its calibration inputs if it needs any."""
    context = BlockContext(prefix, root, model_type)
    tasks = _tasks(root, prefix, unit, cand)

    def swap(task: LayerTask, qw) -> None:
        set_module(root, context.relative(task.name), QuantLinear.from_quantized(task.module, cand.scheme,
                                                                                 cand.params, qw))

    quantize_unit(tasks, {t.name: cand.algorithm for t in tasks}, context, lambda: run_float(root), swap)
    return context


class _Inject:
    """A pre-hook that hands a block its cached input, batch after batch."""

    def __init__(self, hidden: list[torch.Tensor]):
        self.hidden = iter(hidden)

    def __call__(self, _module, args, kwargs):
        h = next(self.hidden)
        return with_hidden((args, kwargs), h)


@contextmanager
def _tail(model: nn.Module, slc: Slice, b: int, first: nn.Module):
    """The model runs only `first` (in place of block b) and the blocks after it, block b's
    cached input injected in place of what the embeddings produce."""
    parent_name, _, attr = slc.blocks_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    full = getattr(parent, attr)
    setattr(parent, attr, nn.ModuleList([first, *list(full)[b + 1:]]))
    handle = first.register_forward_pre_hook(_Inject(slc.inputs[b]), with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
        setattr(parent, attr, full)


@torch.no_grad()
def exact(model: nn.Module, slc: Slice, model_type: str, unit: Unit, cand: Candidate) -> dict[str, float]:
    """{EXACT_KL, EXACT_NLL} of the unit alone under the candidate."""
    if unit.block is not None:
        b = unit.block
        block = copy.deepcopy(slc.blocks[b])

        def feed(root):
            for j in range(len(slc.calls)):
                run_block(root, slc.call(b, j))

        quantize_in(block, f"{slc.blocks_name}.{b}", model_type, unit, cand, feed)
        with _tail(model, slc, b, block):
            q = compare_pass(model, slc.windows, slc.reference, slc.batch_size, progress=False)
    else:  # a layer outside the blocks (an untied lm_head): quantize it in the model, run it whole, put it back
        originals = {li.name: get_module(model, li.name) for li in unit.layers}

        def feed(root):
            for start in range(0, slc.windows.shape[0], slc.batch_size):
                root(input_ids=slc.windows[start:start + slc.batch_size], use_cache=False)

        try:
            quantize_in(model, "", model_type, unit, cand, feed)
            q = compare_pass(model, slc.windows, slc.reference, slc.batch_size, progress=False)
        finally:
            for name, m in originals.items():
                set_module(model, name, m)
    return {EXACT_KL: q.kl_mean, EXACT_NLL: q.nll - slc.reference.nll}


# --- proxy ------------------------------------------------------------------------------------

def fisher_diagonals(model: nn.Module, windows: torch.Tensor, batch_size: int, names: list[str],
                     seed: int) -> dict[str, torch.Tensor]:
    """Per linear (by name), the mean over tokens of the squared gradient of log p(sampled
    token) summed over the window, with respect to each output channel [out_features].
    One window at a time: the vocabulary-wide logits and their gradient dominate memory."""
    batch_size = 1
    sums: dict[str, torch.Tensor] = {}
    tokens = 0
    handles = []
    for name in names:
        module = get_module(model, name)

        def hook(_m, _gin, gout, name=name):
            g = gout[0].detach().float()
            s = g.reshape(-1, g.shape[-1]).pow(2).sum(0)
            sums[name] = s if name not in sums else sums[name] + s

        handles.append(module.register_full_backward_hook(hook))
    emb = model.get_input_embeddings()
    handles.append(emb.register_forward_hook(lambda _m, _i, out: out.detach().requires_grad_(True)))
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    gen = torch.Generator(device=windows.device).manual_seed(seed)
    try:
        with torch.enable_grad():
            for start in range(0, windows.shape[0], batch_size):
                ids = windows[start:start + batch_size]
                logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
                logp = torch.log_softmax(logits, dim=-1)
                with torch.no_grad():
                    sampled = torch.multinomial(logp.exp().reshape(-1, logp.shape[-1]), 1, generator=gen)
                loss = -logp.reshape(-1, logp.shape[-1]).gather(1, sampled).sum()
                loss.backward()
                tokens += ids.numel()
    finally:
        for h in handles:
            h.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
    return {n: s / max(tokens, 1) for n, s in sums.items()}


def _channel_error(original: nn.Linear, quantized: QuantLinear, divisor: torch.Tensor | None, stats) -> torch.Tensor:
    """E[dy_j^2] per output channel [out_features] of the quantized layer against the float one."""
    w = original.weight.detach().float()
    if quantized.format.weight_only:
        wq = quantized.dequantized_weight(torch.float32)
        if divisor is not None:  # the layer now reads x / d: its effective weight is wq / d
            wq = wq / divisor[None, :]
        d = wq - w
        return ((d @ stats.hessian) * d).sum(1)
    x = stats.sample  # activations are quantized too: run real inputs through it
    xin = x if divisor is None else x / divisor[None, :]
    dy = quantized(xin.to(original.weight.dtype)).float() - x @ w.T
    if original.bias is not None:
        dy = dy - original.bias.detach().float()
    return dy.pow(2).mean(0)


def _rounds_alone(cand: Candidate) -> bool:
    """RTN into a weight-only format: its error is the grid's round trip of the weight alone."""
    from ..algorithms import get_algorithm

    return not get_algorithm(cand.algorithm).needs_calibration and cand.scheme_obj.weight_format.weight_only


@torch.no_grad()
def unit_proxy(block: nn.Module, prefix: str, model_type: str, unit: Unit, cand: Candidate, stats: dict,
               feed: Callable[[nn.Module], None], fisher: dict[str, torch.Tensor] | None,
               through_modules: bool = False) -> dict[str, float]:
    """{HESSIAN, FISHER?} of the unit under the candidate; `stats` are the float block's input
    statistics by layer name (hessian, and a sample for activation-quantizing candidates).

    RTN into a weight-only format is priced from the weight grid's round trip directly (the
    same numerics the format stores); anything else is quantized into QuantLinears on a copy of
    the block (`through_modules` forces that path, for tests)."""
    rel = (lambda n: n[len(prefix) + 1:]) if prefix else (lambda n: n)
    errors: dict[str, torch.Tensor] = {}
    if _rounds_alone(cand) and not through_modules:
        grid = WeightGrid.of(cand.scheme_obj, cand.params)
        for li in unit.layers:
            w = get_module(block, rel(li.name)).weight.detach().float()
            d = grid.fake(w, *grid.qparams(w)).sub_(w)
            errors[li.name] = ((d @ stats[li.name].hessian) * d).sum(1)
    else:
        root = copy.deepcopy(block)
        context = quantize_in(root, prefix, model_type, unit, cand, feed)
        for li in unit.layers:
            errors[li.name] = _channel_error(get_module(block, rel(li.name)), get_module(root, rel(li.name)),
                                             context.input_divisors.get(li.name), stats[li.name])
    out = {HESSIAN: float(sum(e.sum().item() for e in errors.values()))}
    if fisher is not None:
        out[FISHER] = float(sum(0.5 * (fisher[n].to(e.device) * e).sum().item() for n, e in errors.items()))
    return out


@dataclass
class Measured:
    values: dict[Key, float]
    computed: int  # entries measured now (the rest came from the cache)
    seconds: float


def measure(model: nn.Module, windows: torch.Tensor, batch_size: int, topk: int, model_type: str,
            units: list[Unit], options: dict[str, list[Candidate]], measures: set[str], known: dict[Key, float],
            seed: int, store: Callable[[dict[Key, float]], None], progress: Progress) -> Measured:
    """Every (measure, unit, candidate) of `measures` not in `known`, stored block by block
    through `store` (a killed search keeps what it measured)."""
    start = time.perf_counter()
    values = dict(known)
    want_exact = bool(measures & {EXACT_KL, EXACT_NLL})
    want_proxy = bool(measures & {FISHER, HESSIAN})
    proxy_measures = {HESSIAN} | ({FISHER} if FISHER in measures else set())

    def missing(u: Unit, c: Candidate, ms) -> bool:
        return not c.keeps and any((m, u.name, c.label) not in values for m in ms)

    exact_todo = [(u, c) for u in units for c in options[u.name] if want_exact and missing(u, c, (EXACT_KL, EXACT_NLL))]
    proxy_todo = [(u, c) for u in units for c in options[u.name] if want_proxy and missing(u, c, proxy_measures)]
    for u in units:
        for c in options[u.name]:
            if c.keeps:  # a unit left in float changes nothing
                for m in measures:
                    values[(m, u.name, c.label)] = 0.0
    if not exact_todo and not proxy_todo:
        return Measured(values, 0, time.perf_counter() - start)
    progress(0.0, "baseline on the calibration slice ...")
    slc = build_slice(model, windows, batch_size, topk, cache_inputs=bool(exact_todo))
    computed = 0
    total = len(exact_todo) + len(proxy_todo)

    if proxy_todo:
        fisher = None
        if FISHER in measures:
            progress(0.02, "Fisher information of every searched layer's output (one backward pass) ...")
            fisher = fisher_diagonals(model, windows, batch_size, sorted({li.name for u, _ in proxy_todo
                                                                         for li in u.layers}), seed)
        by_block: dict[int | None, list[tuple[Unit, Candidate]]] = {}
        for u, c in proxy_todo:
            by_block.setdefault(u.block, []).append((u, c))
        hidden = list(slc.inputs[0])
        for b in range(len(slc.blocks)):
            if b in by_block:
                computed += _proxy_block(slc, b, hidden, model_type, by_block[b], fisher, values, store)
                progress(computed / total, f"proxy: block {b + 1}/{len(slc.blocks)}")
            if b + 1 < len(slc.blocks) and any(k is not None and k > b for k in by_block):
                hidden = [run_block(slc.blocks[b], with_hidden(slc.calls[j], hidden[j])) for j in range(len(hidden))]
        if None in by_block:
            computed += _proxy_outside(model, slc, model_type, by_block[None], fisher, values, store)

    by_unit: dict[str, list[tuple[Unit, Candidate]]] = {}
    for u, c in exact_todo:
        by_unit.setdefault(u.name, []).append((u, c))
    for todo in by_unit.values():
        entries: dict[Key, float] = {}
        for u, c in todo:
            r = exact(model, slc, model_type, u, c)
            entries.update({(m, u.name, c.label): v for m, v in r.items()})
            computed += 1
            progress(computed / total, f"exact: {u.name} {c.label} KL {r[EXACT_KL]:.3g}")
        values.update(entries)
        store(entries)
    return Measured(values, computed, time.perf_counter() - start)


def _proxy_block(slc: Slice, b: int, hidden: list[torch.Tensor], model_type: str,
                 todo: list[tuple[Unit, Candidate]], fisher, values: dict, store) -> int:
    block = slc.blocks[b]
    prefix = f"{slc.blocks_name}.{b}"
    calls = [with_hidden(slc.calls[j], hidden[j]) for j in range(len(hidden))]
    modules = {li.name: get_module(block, li.name[len(prefix) + 1:]) for u, _ in todo for li in u.layers}
    act = {li.name for u, c in todo if not c.scheme_obj.weight_format.weight_only for li in u.layers}
    needs = {n: {"hessian"} | ({"sample"} if n in act else set()) for n in modules}
    from ..models.families import pairings

    shared = [tuple(f"{prefix}.{x}" for x in p.layers) for p in pairings(model_type)]
    stats, handles = attach_stats(modules, needs, shared)
    try:
        for call in calls:
            run_block(block, call)
    finally:
        for h in handles:
            h.remove()

    def feed(root):
        for call in calls:
            run_block(root, call)

    entries: dict[Key, float] = {}
    for u, c in todo:
        for m, v in unit_proxy(block, prefix, model_type, u, c, stats, feed, fisher).items():
            entries[(m, u.name, c.label)] = v
    values.update(entries)
    store(entries)
    return len(todo)


def _proxy_outside(model: nn.Module, slc: Slice, model_type: str, todo: list[tuple[Unit, Candidate]], fisher,
                   values: dict, store) -> int:
    modules = {li.name: get_module(model, li.name) for u, _ in todo for li in u.layers}
    act = {li.name for u, c in todo if not c.scheme_obj.weight_format.weight_only for li in u.layers}
    needs = {n: {"hessian"} | ({"sample"} if n in act else set()) for n in modules}

    def feed(root):
        for start in range(0, slc.windows.shape[0], slc.batch_size):
            root(input_ids=slc.windows[start:start + slc.batch_size], use_cache=False)

    stats, handles = attach_stats(modules, needs, [])
    try:
        with torch.no_grad():
            feed(model)
    finally:
        for h in handles:
            h.remove()
    entries: dict[Key, float] = {}
    for u, c in todo:
        originals = {li.name: get_module(model, li.name) for li in u.layers}
        try:
            context = quantize_in(model, "", model_type, u, c, feed)
            h_total, f_total = 0.0, 0.0
            for li in u.layers:
                e = _channel_error(originals[li.name], get_module(model, li.name),
                                   context.input_divisors.get(li.name), stats[li.name])
                h_total += e.sum().item()
                if fisher is not None:
                    f_total += 0.5 * (fisher[li.name] * e).sum().item()
        finally:
            for name, m in originals.items():
                set_module(model, name, m)
        entries[(HESSIAN, u.name, c.label)] = h_total
        if fisher is not None:
            entries[(FISHER, u.name, c.label)] = f_total
    values.update(entries)
    store(entries)
    return len(todo)
