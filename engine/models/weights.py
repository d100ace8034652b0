"""Where each tensor of a safetensors folder lives, and reading them one at a time.

A folder holds either one `model.safetensors` or shards named by `model.safetensors.index.json`
(its `weight_map`: tensor name -> file), the layout Hugging Face writes and qrecipe's own
sharded checkpoints use. Without an index every `*.safetensors` file of the folder is read.

Reads go through safetensors' `safe_open`, which memory-maps the file: a tensor's pages count
in the process's RSS (as file-backed memory) until the file is closed, even after the tensor
is copied. So each read opens the file, copies the one tensor out and closes it again: a
streamed 16 GB checkpoint never has more than one tensor's pages mapped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def tensor_files(folder: Path) -> dict[str, Path]:
    """tensor name -> the safetensors file that holds it."""
    folder = Path(folder)
    index = folder / INDEX_FILE
    if index.is_file():
        return {k: folder / v for k, v in json.loads(index.read_text())["weight_map"].items()}
    from safetensors import safe_open

    out: dict[str, Path] = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as handle:
            out.update({k: f for k in handle.keys()})
    return out


def file_stamps(folder: Path) -> list[dict]:
    """Name, size and modification time of every weight file: what identifies the weights."""
    return [{"name": f.name, "size": f.stat().st_size, "mtime_ns": f.stat().st_mtime_ns}
            for f in sorted(set(tensor_files(folder).values()))]


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file whole or not at all (a temporary name, then a rename). Its mode is
    safetensors' owner-only one: a folder others read is given normal modes when it is finished
    (engine/files.py normal_modes)."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def read_tensor(file: Path, name: str, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
                ) -> torch.Tensor:
    """One tensor, copied out of the file (on `device`, cast to `dtype` if given); the file's
    mapping is closed before returning."""
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as handle:
        t = handle.get_tensor(name)
        # copy=True: a tensor left on the map would keep the file's pages resident
        return t.to(device=device, dtype=dtype or t.dtype, copy=True)


def read_tensors(files: dict[str, Path], names: Iterable[str], device: torch.device | str = "cpu"
                 ) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for each name, one file mapping open at a time."""
    for name in names:
        yield name, read_tensor(files[name], name, device)
