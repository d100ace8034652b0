"""Per-layer quantization error: each quantized layer's dequantized weight against the
original weight, read back from the model's own safetensors files (so the float copy is
never held in memory next to the quantized model).

Transforms such as AWQ and SmoothQuant fold a per-input-channel scale s into the weight
(W diag(s)) and its inverse into the layer before it; that is not error. So each input
column of the original is first rescaled by the least-squares factor that best matches the
quantized column, and the error is what remains:

    s_j = <Q_j, W_j> / <W_j, W_j>      R = Q - W diag(s)
    rel_error = |R| / |W diag(s)|      sqnr_db = -20 log10(rel_error)

For plain rounding s_j is ~1 and this is the usual relative error (a single factor per
column absorbs about 1/out_features of the error energy).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from .. import metric_names as M
from ..models.weights import read_tensor, tensor_files
from ..modules import QuantLinear


def scale_invariant_error(original: torch.Tensor, quantized: torch.Tensor) -> float:
    w, q = original.double(), quantized.double()
    norms = (w * w).sum(0)
    s = torch.where(norms > 0, (q * w).sum(0) / norms.clamp(min=1e-300), torch.ones_like(norms))
    ref = w * s
    denom = ref.norm()
    return (q - ref).norm().item() / denom.item() if denom > 0 else 0.0


def sqnr_db(rel_error: float) -> float | None:
    return None if rel_error <= 0 else -20 * math.log10(rel_error)


def _input_embedding_name(model: nn.Module) -> str | None:
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return next((n for n, m in model.named_modules() if m is emb), None)


def layer_errors(model: nn.Module, original_folder: Path | None) -> list[dict]:
    """[{name, scheme, rel_error, sqnr_db}] for every QuantLinear; [] without readable originals."""
    if original_folder is None:
        return []
    files = tensor_files(original_folder)
    embedding = _input_embedding_name(model)
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, QuantLinear):
            continue
        key = f"{name}.weight"
        if key not in files and module is model.get_output_embeddings() and embedding:
            key = f"{embedding}.weight"  # a tied lm_head is stored once, as the embedding
        if key not in files:
            continue
        # one tensor mapped at a time: the originals of a model bigger than memory never are at once
        original = read_tensor(files[key], key, dtype=torch.float32)
        rel = scale_invariant_error(original, module.dequantized_weight(torch.float32).cpu())
        out.append({"name": name, "scheme": module.scheme, "rel_error": rel, "sqnr_db": sqnr_db(rel)})
    return out


def summarize(errors: list[dict]) -> dict[str, float]:
    finite = [e["sqnr_db"] for e in errors if e["sqnr_db"] is not None]
    if not finite:
        return {}
    return {M.WEIGHT_SQNR_DB_MEAN: sum(finite) / len(finite), M.WEIGHT_SQNR_DB_MIN: min(finite)}
