"""The hidden states passed between blocks in a streamed run, kept on the host.

`ActivationStore` holds one tensor per (generation, batch): generation g is the input of block
g. Tensors stay in memory while the store holds less than its budget
(run.activation_budget_gib); the others live only in files under its folder. A durable store
(the one a resumable run uses) writes every tensor to its file as well, so the inputs of the
next block survive a kill; the run's state file names the generation that is complete.

`StoredInputs` is the calibration driver's view of them (calibration/blocks.py BlockInputs):
the calls into the current block, rebuilt from the batch's own arguments (attention mask,
rotary embeddings: captured once, on the device) and its stored hidden states.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from ..calibration.capture import BlockCall, hidden_of, with_hidden
from ..models.weights import read_tensor, save_tensors

_KEY = "hidden"


class ActivationStore:
    def __init__(self, folder: Path, budget_bytes: int, durable: bool):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.budget, self.durable = budget_bytes, durable
        self.memory: dict[tuple[int, int], torch.Tensor] = {}
        self.held = 0  # bytes in memory
        self.spilled = 0  # tensors that went to disk for want of budget

    def file(self, gen: int, j: int) -> Path:
        return self.folder / f"g{gen:05d}-b{j:05d}.safetensors"

    def put(self, gen: int, j: int, t: torch.Tensor) -> None:
        t = t.detach().to("cpu").contiguous()
        keep = self.held + t.numel() * t.element_size() <= self.budget
        if self.durable or not keep:
            save_tensors({_KEY: t}, self.file(gen, j))
        if keep:
            self.memory[(gen, j)] = t
            self.held += t.numel() * t.element_size()
        else:
            self.spilled += 1

    def get(self, gen: int, j: int) -> torch.Tensor:
        t = self.memory.get((gen, j))
        return t if t is not None else read_tensor(self.file(gen, j), _KEY)

    def release(self, gen: int, j: int) -> None:
        """Forget the in-memory copy (its file, if any, stays)."""
        t = self.memory.pop((gen, j), None)
        if t is not None:
            self.held -= t.numel() * t.element_size()

    def complete(self, gen: int, count: int) -> bool:
        return all(self.file(gen, j).is_file() for j in range(count))

    def drop(self, below: int | None = None, gen: int | None = None) -> None:
        """Forget generation `gen`, or every generation below `below`, in memory and on disk."""
        def doomed(g: int) -> bool:
            return g == gen if gen is not None else g < below

        for key in [k for k in self.memory if doomed(k[0])]:
            self.release(*key)
        for f in self.folder.glob("g*-b*.safetensors"):
            if doomed(int(f.name[1:6])):
                f.unlink(missing_ok=True)


class StoredInputs:
    """The calibration batches' calls into block `gen`, their hidden states in a store."""

    def __init__(self, calls: list[BlockCall], store: ActivationStore, gen: int, device: torch.device,
                 stored: bool = False):
        """`stored`: the hidden states of generation `gen` are already in the store (a resumed
        run); otherwise the captured calls' own hidden states are put there."""
        self.static = [with_hidden(c, None) for c in calls]
        self.store, self.gen, self.device = store, gen, device
        if not stored:
            for j, call in enumerate(calls):
                store.put(gen, j, hidden_of(call))

    def __len__(self) -> int:
        return len(self.static)

    def __iter__(self) -> Iterator[BlockCall]:
        gen = self.gen
        for j, call in enumerate(self.static):
            yield with_hidden(call, self.store.get(gen, j).to(self.device))

    def advance(self, run: Callable[[BlockCall], torch.Tensor]) -> None:
        """The next block's inputs; the current ones stay on disk until `commit`."""
        gen = self.gen
        for j, call in enumerate(self):
            out = run(call)
            self.store.release(gen, j)
            self.store.put(gen + 1, j, out)
        self.gen = gen + 1

    def commit(self) -> None:
        """The run's state now names generation `gen`: older ones can go."""
        self.store.drop(below=self.gen)

    def clear(self) -> None:
        self.store.drop(gen=self.gen)
        self.static = []
