"""The calibration driver's block provider for a streamed run (calibration/blocks.py).

For each block: read its float weights from the checkpoint onto the compute device, let the
driver calibrate and quantize it, write its tensors as one shard, make the next block's inputs
durable, record the block as done (state.json), and free it. Layers outside the blocks (a
quantized lm_head) calibrate on the last block's outputs through the final norm; the outside
tensors (embeddings, final norm, head) are written last. The per-block work is the driver's,
so the packed tensors are those of a run on the model loaded whole.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from ..calibration.capture import capture_inputs, hidden_of
from ..models.families import moe_layout
from ..modules import PackedExperts, QuantExperts, QuantLinear, get_module, set_module
from ..plan import Plan
from .activations import ActivationStore, StoredInputs
from .resume import ResumeState
from .skeleton import StreamedModel
from .writer import ShardWriter


class StreamedBlocks:
    tail_from_hidden = True

    def __init__(self, model: StreamedModel, plan: Plan, state: ResumeState, writer: ShardWriter, budget_bytes: int,
                 say: Callable[[str], None]):
        self.model, self.state, self.writer, self.say = model, state, writer, say
        self.prefixes = [model.block_prefix(i) for i in range(len(model.blocks))]
        self.start = min(state.done, len(self.prefixes))
        self.done_notes = list(state.notes)
        # Blocks a previous run finished are in their shards; the skeleton gets their (empty)
        # QuantLinears so it describes the checkpoint as a run that did them all would.
        done = tuple(p + "." for p in self.prefixes[:self.start])
        experts: dict[str, dict[str, PackedExperts]] = {}  # experts module -> its two tensors
        for lp in plan.quantized():
            if not lp.name.startswith(done):
                continue
            if lp.kind == "experts":
                owner, _, leaf = lp.name.rpartition(".")
                experts.setdefault(owner, {})[leaf] = PackedExperts(
                    lp.num_experts, lp.in_features, lp.out_features, scheme=lp.scheme, params=lp.quant_params(),
                    dtype=model.dtype, device="meta")
            else:
                set_module(model.model, lp.name, QuantLinear(lp.in_features, lp.out_features, bias=lp.bias,
                                                             scheme=lp.scheme, params=lp.quant_params(),
                                                             dtype=model.dtype, device="meta"))
        layout = moe_layout(plan.model_type)
        for owner, tensors in experts.items():  # the plan quantizes both tensors of an experts module
            set_module(model.model, owner, QuantExperts(tensors[layout.gate_up], tensors[layout.down],
                                                        get_module(model.model, owner).act_fn))
        self.store = ActivationStore(state.activations, budget_bytes, durable=True)
        self.block_seconds: list[float] = []
        self._opened = 0.0

    def inputs(self, windows: torch.Tensor, batch_size: int) -> StoredInputs:
        """The first block's call arguments, captured by running the embeddings; on a resumed
        run, the hidden states of block `start` come from the store instead."""
        m = self.model
        emb = m.embeddings()
        m.materialize(emb)
        calls = capture_inputs(m.model, m.blocks[0], windows, batch_size, device=m.device)
        m.free(emb)
        if self.start == 0:
            return StoredInputs(calls, self.store, 0, m.device)
        gen = self.state.inputs_gen
        if gen != self.start or not self.store.complete(gen, len(calls)):
            raise RuntimeError(f"resume state in {self.state.folder} lacks the inputs of block {self.start}; delete "
                               f"the folder to start over")
        return StoredInputs(calls, self.store, gen, m.device, stored=True)

    def open(self, i: int) -> nn.Module:
        self._opened = time.perf_counter()
        return self.model.open_block(i)

    def close(self, i: int, notes: list[str], inputs: StoredInputs | None) -> None:
        prefix = self.model.block_prefix(i)
        state = {f"{prefix}.{k}": v for k, v in self.model.blocks[i].state_dict().items()}
        written = self.writer.write(i + 1, state)
        self.state.done = i + 1
        self.state.notes += notes
        self.state.inputs_gen = inputs.gen if inputs is not None else None
        self.state.save()  # the commit point: block i is done
        if inputs is not None:
            inputs.commit()
        else:
            self.store.drop(below=1 << 30)
        self.model.free_block(i)
        seconds = time.perf_counter() - self._opened
        self.block_seconds.append(seconds)
        self.say(f"block {i + 1}/{len(self.prefixes)} quantized and written ({written / 2**20:.1f} MiB, "
                 f"{seconds:.1f}s)")

    def outside(self, windows: torch.Tensor, batch_size: int, inputs: StoredInputs | None
                ) -> tuple[nn.Module, Callable[[], None]]:
        """The model (its final norm and head on the device: the layers outside the blocks that
        can be quantized) and a forward of that tail on the last block's outputs. The
        embeddings are read again only to be written (close_outside)."""
        m = self.model
        m.materialize(m.tail_names())

        def run_tail():
            for call in inputs or ():
                m.logits(hidden_of(call))

        return m.model, run_tail

    def close_outside(self, notes: list[str]) -> None:
        m = self.model
        names = m.outside_names()
        m.materialize(names)  # the float ones not read yet (QuantLinears are on the device already)
        wanted = set(names)
        self.writer.write(len(self.prefixes) + 1, {k: v for k, v in m.model.state_dict().items() if k in wanted})
        self.state.notes += notes
        self.state.save()
        m.free(names)
        self.store.drop(below=1 << 30)
