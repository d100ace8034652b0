"""Where the calibration driver gets its blocks and keeps the activations between them.

The driver (driver.py) walks decoder blocks in order and asks a `BlockProvider` for each:

    open(i)              the block on the compute device, float weights in place
    close(i, notes, x)   the block is quantized (x holds the next block's inputs, if any)
    inputs(...)          the first still-to-quantize block's inputs, as `BlockInputs`
    outside(...)         the module and forward that calibrate layers outside the blocks
    close_outside(notes) those layers are quantized

`InMemoryBlocks` serves the blocks of a model that is loaded whole: nothing to read or
write, activations in a plain list on the device (what the driver always did). The streamed
provider (engine/streaming/blocks.py) materializes each block from the checkpoint, writes
its packed tensors when it closes and frees it, and keeps activations on the host; both
run the same per-block code, so their packed tensors are bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

import torch
from torch import nn

from .capture import BlockCall, capture_inputs, find_blocks, with_hidden


class BlockInputs(Protocol):
    """The calibration batches' calls into the current block."""

    def __iter__(self) -> Iterator[BlockCall]: ...

    def advance(self, run: Callable[[BlockCall], torch.Tensor]) -> None:
        """Replace each batch's hidden states by `run(call)`: the next block's inputs."""

    def clear(self) -> None:
        """No later block needs data: free the activations."""


class CallList(list):
    """Activations held in memory as the calls themselves, replaced in place (one block's
    inputs are held at a time)."""

    def advance(self, run: Callable[[BlockCall], torch.Tensor]) -> None:
        for j, call in enumerate(self):
            self[j] = with_hidden(call, run(call))


class BlockProvider(Protocol):
    prefixes: list[str]  # module name of each block, e.g. "model.layers.3"
    start: int  # the first block still to quantize (later than 0 when a run resumes)
    done_notes: list[str]  # notes of the blocks before `start`
    tail_from_hidden: bool  # layers outside the blocks calibrate on the last block's outputs

    def open(self, i: int) -> nn.Module: ...

    def close(self, i: int, notes: list[str], inputs: BlockInputs | None) -> None: ...

    def inputs(self, windows: torch.Tensor, batch_size: int) -> BlockInputs: ...

    def outside(self, windows: torch.Tensor, batch_size: int, inputs: BlockInputs | None
                ) -> tuple[nn.Module, Callable[[], None]]: ...

    def close_outside(self, notes: list[str]) -> None: ...


class InMemoryBlocks:
    """The blocks of a model loaded whole on its device."""

    start = 0
    tail_from_hidden = False

    def __init__(self, model: nn.Module):
        self.model = model
        found = find_blocks(model)
        self.found = found is not None
        name, self.blocks = found if found is not None else ("", [])
        self.prefixes = [f"{name}.{i}" for i in range(len(self.blocks))]
        self.done_notes: list[str] = []

    def open(self, i: int) -> nn.Module:
        return self.blocks[i]

    def close(self, i: int, notes: list[str], inputs: BlockInputs | None) -> None:
        pass

    def inputs(self, windows: torch.Tensor, batch_size: int) -> CallList:
        return CallList(capture_inputs(self.model, self.blocks[0], windows, batch_size))

    def outside(self, windows: torch.Tensor, batch_size: int, inputs: BlockInputs | None
                ) -> tuple[nn.Module, Callable[[], None]]:
        """One forward of the whole (by then quantized) model on the calibration windows."""
        model = self.model
        device = next(model.parameters()).device

        def run_model():
            for start in range(0, windows.shape[0], batch_size):
                model(input_ids=windows[start:start + batch_size].to(device), use_cache=False)

        return model, run_model

    def close_outside(self, notes: list[str]) -> None:
        pass
