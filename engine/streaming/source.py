"""The float checkpoint a streamed run reads: a local safetensors folder (one file, or shards
with `model.safetensors.index.json`), read one tensor at a time (models/weights.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ConfigError
from ..models.loading import resolve_source
from ..models.spec import ModelSpec
from ..models.weights import file_stamps, read_tensor, tensor_files


class WeightSource:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.files = tensor_files(self.folder)
        if not self.files:
            raise ConfigError(f"run.streaming: {self.folder} holds no safetensors weights; a streamed run reads "
                              f"*.safetensors (convert the model, or set run.streaming=never)")

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def read(self, name: str, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
        return read_tensor(self.files[name], name, device, dtype)

    def stamps(self) -> list[dict]:
        return file_stamps(self.folder)


def weight_source(spec: ModelSpec, cache_root: Path) -> WeightSource:
    """The model's safetensors folder (a GGUF model's converted copy, made once if needed)."""
    loc = resolve_source(spec, cache_root, convert=True)
    if not loc.local or loc.gguf_file:
        raise ConfigError(f"run.streaming: model {spec.name!r} is not a local safetensors folder ({loc.source}); "
                          f"a streamed run reads one: download it first (model=hf model.path=DIR) or set "
                          f"run.streaming=never")
    return WeightSource(Path(loc.source))
