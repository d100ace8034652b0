"""The calibration driver: quantize a model one decoder block at a time.

  1. Capture the first block's inputs on the calibration windows (the forward stops there).
  2. For each block: run it in float on those inputs with the statistics its layers'
     algorithms need being gathered; let the algorithms transform and quantize its
     layers; swap the QuantLinears in; run the now-quantized block on the same inputs to
     get the next block's inputs, so later blocks calibrate on what the quantized model
     really feeds them. (The float pass of a batch ends once every statistic has observed
     it, stats.Stream.end_early: a dense block's down_proj and what follows never run in it.)
     When a layer's algorithm compares against the float model (GPTQ's float_targets), a
     second stream of block inputs, the float model's own, runs beside it: each block runs
     on it first (still in float) and its outputs feed the next block's float stream.
     A block all of whose layers quantize from their own inputs' statistics alone (GPTQ's
     true_sequential, the default) runs once instead: each input group is quantized as soon
     as every batch has reached it, and the batches go on through it (sequential.py); its
     outputs are the next block's inputs.
  3. Layers outside the blocks (e.g. a quantized lm_head) are calibrated last, with one
     forward of the whole (by then quantized) model on the calibration windows.

Peak memory is the model plus one block's inputs for all windows (samples x seq_len x
hidden) and one batch of its activations. A block none of whose layers needs data is
quantized without running it in float, and blocks after the last one that needs data
are not run at all.

The blocks come from a block provider (blocks.py): the loaded model's own, or, for a model
bigger than memory, one that reads each block from the checkpoint and writes it once it is
quantized (engine/streaming/). The per-block work is this one code path for both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..algorithms import Algorithm, BlockContext, LayerTask, get_algorithm
from ..modules import UnfusedExperts
from ..plan import LayerPlan, Plan
from ..progress import progress_bar
from ..quant.rtn import rtn_quantize
from .activation_scales import assign_static_scales, needs_static_scale
from .blocks import BlockProvider, CallList, InMemoryBlocks
from .capture import calibration_precision, run_block, with_hidden
from .sequential import run_paused
from .stats import StatsComplete, Stream, attach_stats, input_stats, record


def _algorithms(tasks: list[LayerTask], algorithm_of: dict[str, str], context: BlockContext) -> list[Algorithm]:
    """One instance per (algorithm, arguments) among the block's tasks, in plan order."""
    groups: dict[tuple, list[LayerTask]] = {}
    for t in tasks:
        groups.setdefault((algorithm_of[t.name], tuple(sorted(t.args.items()))), []).append(t)
    return [get_algorithm(name)(ts, context) for (name, _), ts in groups.items()]


def _shared_inputs(context: BlockContext) -> list[tuple[str, ...]]:
    return [tuple(context.absolute(n) for n in group) for group in context.pairings()[1]]


def _finite(q) -> bool:
    return all(t is None or bool(torch.isfinite(t).all()) for t in (q.scale, q.input_scale))


def _wants_float_stream(lp: LayerPlan) -> bool:
    return get_algorithm(lp.algorithm).wants_float_stream(dict(lp.args))


# The fix named when a block's batches do not reach its layers in one order (sequential.py)
IN_PASS_FIX = ("calibrate such a block in two passes: set true_sequential=false in its rule's args "
               "(e.g. recipe.base.args.true_sequential=false)")

RunPass = Callable[[dict, Callable, Callable], None]


def _checked(t: LayerTask, q, algorithm: str, notes: list[str]):
    """q, or RTN's weights where q got a non-finite scale (noted): a NaN scale is never stored."""
    if _finite(q):
        return q
    notes.append(f"{algorithm}: {t.name} got a non-finite scale; quantized with rtn instead")
    fallback = rtn_quantize(t.module.weight.float(), t.scheme, t.params)
    fallback.input_scale = q.input_scale
    if not _finite(fallback):
        raise FloatingPointError(f"{t.name}: its weights or calibration activations are not finite; "
                                 f"check the model and calib.data")
    return fallback


def _quantize_in_pass(tasks: list[LayerTask], algos: list[Algorithm], needs: dict[str, set[str]],
                      context: BlockContext, run_pass: RunPass, algorithm_of: dict[str, str],
                      notes: list[str]) -> dict:
    """Each input group quantized as soon as its statistics are complete, in the unit's one pass
    (sequential.py): its quantized values are written into its layers' weights for the rest of
    the pass, and the float weights put back once it is over (the swap reads them)."""
    modules = {t.name: t.module for t in tasks}
    by_name = {t.name: t for t in tasks}
    context.stats, groups = input_stats(modules, needs, _shared_inputs(context))
    results, saved = {}, {}

    def arrive(group: tuple[str, ...], x: torch.Tensor) -> None:
        record(context.stats[group[0]], x)

    def complete(group: tuple[str, ...]) -> None:
        for algo in algos:
            results.update(algo.quantize_group(group))
        for name in group:
            t = by_name[name]
            results[name] = q = _checked(t, results[name], algorithm_of[name], notes)
            saved[name] = w = t.module.weight.data
            t.module.weight.data = t.grid.values(q).to(w.device, w.dtype)

    try:
        run_pass({modules[n]: group for group in groups for n in group}, arrive, complete)
    finally:
        for name, w in saved.items():
            by_name[name].module.weight.data = w
    return results


def quantize_unit(tasks: list[LayerTask], algorithm_of: dict[str, str], context: BlockContext,
                  run_float: Callable[[], None], swap: Callable[[LayerTask, object], None],
                  stream: Stream | None = None, run_pass: RunPass | None = None, no_pass: str = "") -> list[str]:
    """Calibrate and quantize the tasks of one unit (a block, or the layers outside blocks).

    `run_float` runs the unit on the calibration batch (setting `stream.float` while it runs
    the float stream); it is called only if some task needs statistics. `run_pass`, where the
    driver can run the unit in one pass (sequential.run_paused over its inputs, keeping its
    outputs), is used instead when every algorithm of the unit can quantize in it
    (Algorithm.in_pass_blocker); `no_pass`
    says why the driver cannot (for the note when a rule asked for it)."""
    algos = _algorithms(tasks, algorithm_of, context)
    needs: dict[str, set[str]] = {}
    for algo in algos:
        for t in algo.tasks:
            needs[t.name] = set(algo.stats_for(t.args)) | ({"absmax"} if needs_static_scale(t) else set())
    notes: list[str] = []
    blocker = next(filter(None, (a.in_pass_blocker() for a in algos)), None) \
        or ("some of its layers need no statistics" if not all(needs.values()) else None) \
        or (no_pass or "no block inputs" if run_pass is None else None)
    in_pass = bool(algos) and blocker is None
    asked = sorted({algorithm_of[t.name] for t in tasks if t.args.get("true_sequential")})
    if asked and not in_pass:
        notes.append(f"{', '.join(asked)}: true_sequential not applied to "
                     f"{context.prefix or 'the layers outside the blocks'} ({blocker}); calibrated on its float forward")
    if in_pass:
        results = _quantize_in_pass(tasks, algos, needs, context, run_pass, algorithm_of, notes)
        notes.append(f"{', '.join(sorted({a.name for a in algos}))}: true_sequential: each block's input groups "
                     f"quantized in order in its one forward pass")
        for algo in algos:
            notes += algo.notes
    else:
        if any(needs.values()):
            modules = {t.name: t.module for t in tasks}
            context.stats, handles = attach_stats(modules, needs, _shared_inputs(context), stream)
            for algo in algos:
                algo.attach()
            try:
                run_float()
            finally:
                for h in handles:
                    h.remove()
                for algo in algos:
                    algo.detach()
        for algo in algos:
            algo.retarget()
        for algo in algos:
            algo.transform()
        results = {}
        for algo in algos:
            results.update(algo.quantize())
            notes += algo.notes
    for t in tasks:
        if t.name in context.stats:
            t.tokens_seen = context.stats[t.name].tokens
    notes += assign_static_scales(tasks, results, context)
    for t in tasks:
        swap(t, results[t.name] if in_pass else _checked(t, results[t.name], algorithm_of[t.name], notes))
    context.stats = {}
    return notes


@torch.no_grad()
def calibrate_and_quantize(model: nn.Module, plan: Plan, layers: list[LayerPlan], windows: torch.Tensor | None,
                           batch_size: int, make_tasks: Callable[[nn.Module, LayerPlan], list[LayerTask]],
                           swap: Callable[[LayerTask, object], None], progress: bool = True,
                           blocks: BlockProvider | None = None, precision: str = "float32") -> list[str]:
    """Quantize every planned layer in `layers`, block by block; return the run's notes.

    `make_tasks` turns a planned layer into its tasks: one for a linear, one per expert and
    projection for an expert tensor (whose experts module it unfuses in the model).
    `blocks` serves the blocks (blocks.py): by default the loaded model's own; a streamed run
    passes one that reads each block from the checkpoint and writes it when done. `windows`
    may be None when no layer calibrates. `precision` (calib.precision): float32, or bfloat16 to
    run the forward passes under autocast (capture.calibration_precision); statistics, solvers and
    the block inputs handed on stay float32."""
    algorithm_of: dict[str, str] = {}

    def tasks_of(lps: list[LayerPlan]) -> list[LayerTask]:
        tasks = []
        for lp in lps:
            for t in make_tasks(model, lp):
                algorithm_of[t.name] = lp.algorithm
                tasks.append(t)
        return tasks

    blocks = blocks if blocks is not None else InMemoryBlocks(model)
    notes: list[str] = list(blocks.done_notes)
    if isinstance(blocks, InMemoryBlocks) and not blocks.found:
        notes.append(f"no decoder block list found for model type {plan.model_type!r} "
                     f"(engine/models/families.py BLOCK_LISTS); calibrated the whole model at once")
    prefixes = blocks.prefixes
    by_block: list[list[LayerPlan]] = [[] for _ in prefixes]
    outside: list[LayerPlan] = []
    for lp in layers:
        index = next((i for i, p in enumerate(prefixes) if lp.name.startswith(p + ".")), None)
        (outside if index is None else by_block[index]).append(lp)

    last_needing_data = max((i for i, lps in enumerate(by_block) if any(lp.calibrates for lp in lps)), default=-1)
    if blocks.tail_from_hidden and any(lp.calibrates for lp in outside):
        last_needing_data = len(prefixes)  # the outside layers read the last block's outputs: keep them
    inputs = blocks.inputs(windows, batch_size) if last_needing_data >= blocks.start else None
    last_float = max((i for i, lps in enumerate(by_block) if any(map(_wants_float_stream, lps))), default=-1)
    float_inputs: CallList | None = None  # the float model's block inputs (float_targets)
    if inputs is not None and last_float >= blocks.start:
        if isinstance(blocks, InMemoryBlocks):
            float_inputs = CallList(inputs)
        else:
            notes.append("float_targets: a streamed run keeps no second, float stream of block inputs; "
                         "not applied (each layer reproduces its own output on the quantized model's inputs)")
    if precision != "float32" and inputs is not None:
        notes.append(f"calib.precision={precision}: the calibration's block forward passes ran under {precision} "
                     f"autocast (statistics and solvers in float32)")
    stream = Stream(end_early=True)  # run_float discards the quantized stream's outputs
    bar = progress_bar(total=len(prefixes), initial=blocks.start, desc="calibrate", unit="block", enabled=progress)
    for i in range(blocks.start, len(prefixes)):
        block = blocks.open(i)
        context = BlockContext(prefixes[i], block, plan.model_type, calls=inputs, precision=precision)
        tasks = tasks_of(by_block[i])
        float_out: list[torch.Tensor] = []  # this block's float outputs on the float stream
        if float_inputs is not None:
            context.float_outputs = float_out  # filled by run_float, before the algorithms quantize

        def run_float(block=block):
            with calibration_precision(block, precision):
                for j, call in enumerate(inputs or ()):
                    stream.batch = j
                    if float_inputs is not None:
                        stream.float = True
                        try:
                            float_out.append(run_block(block, float_inputs[j]))
                        finally:
                            stream.float = False
                    try:
                        run_block(block, call)
                    except StatsComplete:
                        pass  # every statistic has this batch: the rest of the forward feeds none

        passed: list[torch.Tensor] = []  # the block's outputs, when it was quantized in one pass

        def run_pass(group_of, arrive, complete, block=block):
            passed[:] = run_paused(block, list(inputs), group_of, arrive, complete, precision, fix=IN_PASS_FIX)

        no_pass = ("a float stream of block inputs runs beside the quantized one" if float_inputs is not None else
                   "an experts block: the router sends each batch to other experts"
                   if any(isinstance(m, UnfusedExperts) for m in block.modules()) else "")
        if float_inputs is not None and not any(lp.calibrates for lp in by_block[i]):
            with calibration_precision(block, precision):  # no statistics pass: run it alone
                float_out = [run_block(block, c) for c in float_inputs]
        block_notes = quantize_unit(tasks, algorithm_of, context, run_float, swap, stream,
                                    run_pass=None if no_pass or inputs is None else run_pass, no_pass=no_pass)
        notes += block_notes
        if float_inputs is not None:
            float_inputs = CallList(map(with_hidden, float_inputs, float_out)) if i < last_float else None
        if inputs is not None:
            if i < last_needing_data and passed:
                outputs = iter(passed)
                inputs.advance(lambda call: next(outputs))  # the one pass ran the quantized block already
            elif i < last_needing_data:
                with calibration_precision(block, precision):
                    inputs.advance(lambda call, block=block: run_block(block, call))
            else:
                inputs.clear()  # later blocks need no data: free the activations
                inputs = None
        blocks.close(i, block_notes, inputs)
        bar.update(1)
    bar.close()

    outside_notes: list[str] = []
    if outside:
        root, run_outside = blocks.outside(windows, batch_size, inputs)
        context = BlockContext("", root, plan.model_type, precision=precision)

        def run_root():
            with calibration_precision(root, precision):
                run_outside()

        outside_notes = quantize_unit(tasks_of(outside), algorithm_of, context, run_root, swap)
        notes += outside_notes
    blocks.close_outside(outside_notes)
    return _dedupe(notes)


def _dedupe(notes: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(notes))
