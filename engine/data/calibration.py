"""Calibration samples: `calib.samples` windows of `calib.seq_len` tokens from calib.data.

The text is cut into pieces (jsonl documents; plain text in chunks of whole lines), the
pieces are shuffled with `calib.seed`, and the windows are the first tokens of that
shuffled stream (pieces joined by a blank line, no BOS, as for evaluation). Only as many
pieces are tokenized as the windows need. The same spec and tokenizer always give the
same windows, so the same recipe always gives the same quantized weights.
"""

from __future__ import annotations

import torch

from ..config.settings import CalibSpec
from ..errors import ConfigError
from .text import load_documents

# Plain text files are one document: chunking them lets the seed draw windows from the
# whole file instead of always its start. ~8 KB is a few windows of 512 tokens.
CHUNK_CHARS = 8192


def _chunks(doc: str, size: int = CHUNK_CHARS) -> list[str]:
    if len(doc) <= size:
        return [doc]
    out, start = [], 0
    while start < len(doc):
        end = doc.find("\n", start + size)
        end = len(doc) if end < 0 else end + 1
        out.append(doc[start:end])
        start = end
    return out


def calibration_windows(tokenizer, spec: CalibSpec) -> torch.Tensor:
    """Token ids [calib.samples, calib.seq_len] (int64)."""
    pieces = [c for doc in load_documents(spec.data, "calib.data") for c in _chunks(doc) if c.strip()]
    order = torch.randperm(len(pieces), generator=torch.Generator().manual_seed(spec.seed)).tolist()
    needed = spec.samples * spec.seq_len
    ids: list[int] = []
    for i in order:
        ids += tokenizer(pieces[i] + "\n\n", add_special_tokens=False)["input_ids"]
        if len(ids) >= needed:
            break
    if len(ids) < needed:
        have = len(ids) // spec.seq_len
        raise ConfigError(f"calib.samples: {spec.data.name} holds {have} windows of {spec.seq_len} tokens, not "
                          f"{spec.samples}; set calib.samples={have} or lower, lower calib.seq_len, or use more text")
    return torch.tensor(ids[:needed], dtype=torch.long).reshape(spec.samples, spec.seq_len)
