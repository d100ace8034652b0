"""The validated `model` config group."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: str  # local folder, "pypi:<package>" (a folder inside an installed package), or a hub id
    gguf_file: str | None = None
    dtype: str = "auto"  # auto: bfloat16 on CUDA, float32 on CPU
    revision: str | None = None
    trust_remote_code: bool = False
    allow_hub: bool = True  # a path that is not a local folder may be fetched from the hub
    cache_gguf: bool = True  # convert a GGUF once and keep a safetensors copy
    install_hint: str | None = None
