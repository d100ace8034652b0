"""One forward pass per block: each input group is quantized as soon as every calibration
batch has reached it, and the batches go on through the quantized layers.

The two-pass driver (driver.py) runs a block in float to gather its statistics, quantizes it,
then runs it again, quantized, to get the next block's inputs. When every layer of a block can
be quantized from its own input's statistics alone (GPTQ: `Algorithm.in_pass_blocker` is None), one
pass does both: the layers that read the block's input (q/k/v) are quantized once all batches
have shown them that input; the attention output then runs through the quantized q/k/v, so
o_proj calibrates on what the quantized model feeds it, and so on to down_proj (the GPTQ
paper's "true sequential" order, GPTQModel's default). The block's outputs are then the
quantized block's outputs: no second pass.

How: each batch's forward runs in a thread of its own, and only one thread runs at a time (this
module's caller hands the turn to each in batch order), so the work and its order are those of a
plain loop over the batches. A pre-hook on every layer of each input group stops a batch at the
first of them it reaches, after `arrive` has recorded its input. Once every batch has stopped at
the same group, `complete` quantizes it (writing the quantized values into its layers' weights)
and every batch goes on. Memory: every batch's activations at the point it stopped are held at
once (the two-pass driver holds one batch's).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence

import torch
from torch import nn

from .capture import BlockCall, calibration_precision, run_block


class PassDiverged(RuntimeError):
    """The calibration batches did not reach the block's input groups in one order, once each."""


class _Stopped(Exception):
    """Ends a waiting batch's forward when another batch failed."""


def run_paused(block: nn.Module, calls: Sequence[BlockCall], group_of: dict[nn.Module, Hashable],
               arrive: Callable[[Hashable, torch.Tensor], None], complete: Callable[[Hashable], None],
               precision: str = "float32", fix: str = "") -> list[torch.Tensor]:
    """The block's outputs on `calls`, with `complete(group)` called once every batch has reached
    that group (and `arrive(group, input)` once per batch, when it does). `group_of` maps each
    layer to its input group. `fix` ends the error raised when the batches do not all reach
    the groups in one order, once each (e.g. an expert the router sent no token)."""
    n = len(calls)
    turn = [threading.Semaphore(0) for _ in range(n)]
    back = threading.Semaphore(0)
    state: list[tuple[str, object]] = [("new", None)] * n
    local = threading.local()
    stopping = False

    def stop_at(module: nn.Module, args: tuple) -> None:
        group = group_of[module]
        if module in local.called:
            raise PassDiverged(f"a layer of input group {group} ran twice in one forward of the block; {fix}")
        local.called.add(module)
        if group in local.reached:
            return  # another layer of a group this batch already stopped at (k_proj after q_proj)
        local.reached.add(group)
        arrive(group, args[0])
        state[local.j] = ("at", group)
        back.release()
        turn[local.j].acquire()
        if stopping:
            raise _Stopped

    def work(j: int) -> None:
        local.j, local.called, local.reached = j, set(), set()
        turn[j].acquire()
        try:
            if stopping:
                raise _Stopped
            with torch.no_grad(), calibration_precision(block, precision):  # both are per thread
                state[j] = ("done", run_block(block, calls[j]))
        except BaseException as e:  # handed to the caller's thread
            state[j] = ("error", e)
        back.release()

    handles = [m.register_forward_pre_hook(stop_at) for m in group_of]
    threads = [threading.Thread(target=work, args=(j,), name=f"calibration-batch-{j}", daemon=True)
               for j in range(n)]
    for t in threads:
        t.start()
    running = set(range(n))
    try:
        while True:
            for j in range(n):
                turn[j].release()
                back.acquire()
                kind, value = state[j]
                if kind != "at":
                    running.discard(j)
                if kind == "error":
                    raise value
            kinds = {kind for kind, _ in state}
            if kinds == {"done"}:
                return [value for _, value in state]
            groups = {value for kind, value in state if kind == "at"}
            if kinds != {"at"} or len(groups) != 1:
                raise PassDiverged(f"the calibration batches stopped at different input groups of the block "
                                   f"({', '.join(sorted(map(str, groups)))}"
                                   f"{' or ran to its end' if 'done' in kinds else ''}); {fix}")
            complete(groups.pop())
    finally:
        stopping = True
        for j in running:
            turn[j].release()
        for t in threads:
            t.join()
        for h in handles:
            h.remove()
