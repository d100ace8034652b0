"""The checkpoint of a streamed run, written shard by shard as blocks finish.

Shard i of N (`model-0000i-of-0000N.safetensors`, the names Hugging Face uses) holds decoder
block i-1's tensors; the last shard holds everything outside the blocks (embeddings, final
norm, head). Each shard is written under a temporary name and renamed, so a shard that exists
is whole. `finish` writes `model.safetensors.index.json` (tensor -> shard) and the rest of the
qrecipe checkpoint (checkpoint.py write_metadata), and links the shards into the run's folder.

Files and folders get the process's normal mode (its umask), like the rest of the run folder.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import safe_open

from ..checkpoint import METADATA, unique_tensors, write_metadata
from ..models.weights import INDEX_FILE, save_tensors


def shard_name(i: int, n: int) -> str:
    return f"model-{i:05d}-of-{n:05d}.safetensors"


class ShardWriter:
    def __init__(self, folder: Path, shards: int):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.shards = shards
        self.aliases: dict[str, str] = {}

    def path(self, i: int) -> Path:
        return self.folder / shard_name(i, self.shards)

    def write(self, i: int, state: dict[str, torch.Tensor]) -> int:
        """Shard i (1-based) with these tensors; returns its bytes. Tied tensors are stored once."""
        tensors, aliases = unique_tensors(state)
        self.aliases.update(aliases)
        save_tensors(tensors, self.path(i), METADATA)
        return sum(t.numel() * t.element_size() for t in tensors.values())

    def weight_map(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for i in range(1, self.shards + 1):
            with safe_open(str(self.path(i)), framework="pt") as f:
                out.update({k: self.path(i).name for k in f.keys()})
        return out

    def finish(self, out: Path, model, tokenizer, plan, dtype: torch.dtype) -> int:
        """The complete checkpoint in `out`; returns the bytes of its tensors."""
        missing = [self.path(i).name for i in range(1, self.shards + 1) if not self.path(i).is_file()]
        if missing:
            raise RuntimeError(f"streamed checkpoint in {self.folder} lacks {', '.join(missing)}")
        out.mkdir(parents=True, exist_ok=True)
        total = 0
        for i in range(1, self.shards + 1):
            src, dst = self.path(i), out / self.path(i).name
            total += src.stat().st_size
            try:  # a second name for the same file: the resume folder keeps its copy until the run succeeds
                os.link(src, dst)
            except OSError:  # another filesystem
                shutil.copy2(src, dst)
        (out / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total},
                                                  "weight_map": self.weight_map()}, indent=2))
        write_metadata(out, model, tokenizer, plan, dtype, self.aliases)
        return total
