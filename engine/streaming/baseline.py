"""The float baseline of a model that does not fit, measured block by block.

Perplexity, KL and top-1 agreement need, per eval window, the baseline's top-k log-probs
(evaluate/divergence.py). They are computed like the quantization: the eval windows' hidden
states go through one block at a time (each block read from the checkpoint, run on every
window, freed), then through the final norm and head, batch by batch. Same windows, same
batches, same code for the logits' reference as a baseline loaded whole, and the same cache
(evaluate/baseline_cache.py): a baseline computed once is reused by every later run.

Not measured for such a baseline, and said so in the run's notes:
  - task families: their greedy continuations need one full pass of the float weights per
    generated token (eval.tasks.new_tokens x the model's bytes read from disk: 32 x 16 GB for
    an 8B model, 32 x 140 GB for a 70B one), which is no longer an evaluation but a benchmark
    of the disk. A baseline cached with its tasks (computed where it fitted, same settings)
    is used, tasks included.
  - speed and peak memory: a model streamed from disk would time the disk, not the model.
The variant (which fits) is then loaded and measured normally; metrics that are ratios to
the baseline are left out rather than guessed.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from ..calibration.capture import capture_inputs, hidden_of, run_block
from ..config.settings import Settings
from ..evaluate.baseline_cache import BaselineOutputs
from ..evaluate.divergence import TextReference, reference_from_logits
from ..evaluate.suite import BaselineSide, EvalInputs, cached_baseline, store_baseline
from .activations import ActivationStore, StoredInputs
from .skeleton import StreamedModel

def skipped_notes(why: str, tasks: bool, lm_eval: bool = False) -> list[str]:
    """What a streamed baseline does not measure, and why (`why`: the plan's execution reason)."""
    streamed = f"the float baseline was streamed block by block ({why}) for perplexity, KL and top-1 agreement only"
    notes = [f"baseline speed and peak memory not measured: {streamed}, and timing a model read from disk would time "
             f"the disk; the variant's own figures are recorded without speedup or reduction ratios"]
    if lm_eval:
        notes.insert(0, f"lm-eval not measured: {streamed}; lm-eval scores a whole model in memory, so "
                        f"lm_eval.* metrics are absent")
    if tasks:
        notes.insert(0, f"baseline task families not measured: {streamed}; greedy generation would read the whole "
                        f"float model once per generated token (eval.tasks.new_tokens passes), so task.* metrics "
                        f"are absent")
    return notes


@torch.no_grad()
def streamed_references(model: StreamedModel, windows: dict[str, torch.Tensor], batch_size: int, k: int,
                        work: Path, budget_bytes: int, say: Callable[[str], None]) -> dict[str, TextReference]:
    """Each text's reference, with one read of the float weights for all texts together."""
    m, device = model, model.device
    emb = m.embeddings()
    m.materialize(emb)
    inputs = {}
    for n, (name, w) in enumerate(windows.items()):
        store = ActivationStore(work / f"text{n}", budget_bytes // max(1, len(windows)), durable=False)
        inputs[name] = StoredInputs(capture_inputs(m.model, m.blocks[0], w, batch_size, device=device), store, 0,
                                    device)
    m.free(emb)
    for i in range(len(m.blocks)):
        block = m.open_block(i)
        for x in inputs.values():
            x.advance(lambda call: run_block(block, call))
            x.commit()
        m.free_block(i)
        say(f"baseline block {i + 1}/{len(m.blocks)}")
    tail = m.tail_names()
    m.materialize(tail)
    refs = {}
    for name, x in inputs.items():
        w = windows[name]
        batches = ((w[j * batch_size:(j + 1) * batch_size].to(device), m.logits(hidden_of(call)))
                   for j, call in enumerate(x))
        refs[name] = reference_from_logits(batches, k)
        x.clear()
    m.free(tail)
    return refs


def measure_baseline_streamed(model: StreamedModel, settings: Settings, inputs: EvalInputs, device: torch.device,
                              dtype: torch.dtype, work: Path, why: str, say: Callable[[str], None]) -> BaselineSide:
    """The baseline's side of the measurement; its notes say what was not measured."""
    ev = settings.eval
    texts = set(inputs.windows)
    full = cached_baseline(settings, device, dtype, [it.source for it in inputs.items], texts, say)
    if full.outputs is not None:
        say(f"baseline outputs: cached with its task families ({full.folder})")
        notes = full.notes + skipped_notes(why, tasks=False, lm_eval=False)
        for note in notes:
            say(f"note: {note}")
        return BaselineSide(full.outputs, True, full.key, full.folder, full.parts, model.float_bytes, None, notes)
    # What a streamed baseline holds is what a run without task families would: cached under that key.
    no_tasks = dataclasses.replace(settings, eval=dataclasses.replace(
        ev, tasks=dataclasses.replace(ev.tasks, families=()), lm_eval=dataclasses.replace(ev.lm_eval, tasks=())))
    lookup = cached_baseline(no_tasks, device, dtype, [], texts, say)
    cached = lookup.outputs is not None
    if cached:
        say(f"baseline outputs: cached ({lookup.folder})")
        outputs = lookup.outputs
    else:
        say("baseline outputs: computing block by block from the checkpoint (cached for later runs)")
        try:
            refs = streamed_references(model, inputs.windows, ev.batch_size, ev.kl_topk, work,
                                       int(settings.run.activation_budget_gib * 2**30), say)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        outputs = BaselineOutputs(refs, None, [])
        store_baseline(lookup, outputs)
    notes = lookup.notes + skipped_notes(why, tasks=bool(inputs.items), lm_eval=ev.lm_eval.enabled)
    for note in notes:
        say(f"note: {note}")
    return BaselineSide(outputs, cached, lookup.key, lookup.folder, lookup.parts, model.float_bytes, None, notes)
