"""Tokenizer from a GGUF file whose metadata transformers rejects.

Some GGUF files (llama2.c exports such as stories260K) store pad_token_id = 2**32 - 1,
which makes transformers index past the vocabulary. We read the metadata the same way,
drop special-token ids that are out of range, and let transformers build the tokenizer.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def out_of_range_special_tokens(gguf_path: Path) -> dict[str, int]:
    """Special-token ids the GGUF's metadata names that lie outside its vocabulary (name -> id)."""
    from transformers.integrations.gguf import gguf_tokenizer_mapping as m
    from transformers.integrations.gguf.reader import read_gguf_metadata

    metadata, _ = read_gguf_metadata(str(gguf_path), ("tokenizer.ggml.tokens",))
    n = len(metadata["tokenizer.ggml.tokens"])
    ids = {name: metadata.get(f"tokenizer.ggml.{key}") for name, key in m._SPECIAL_TOKENS.items()}
    return {name: i for name, i in ids.items() if i is not None and not 0 <= i < n}


def load_gguf_tokenizer(folder: Path, gguf_file: str):
    """transformers' tokenizer for the GGUF; where its metadata names special tokens outside the
    vocabulary (which transformers cannot load), the repaired one below, with a warning."""
    bad = out_of_range_special_tokens(folder / gguf_file)
    if not bad:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file)
    log.warning("%s names special tokens outside its vocabulary (%s); they are left out of the tokenizer",
                gguf_file, ", ".join(f"{k}={v}" for k, v in bad.items()))
    return tokenizer_from_gguf(folder / gguf_file)


def tokenizer_from_gguf(gguf_path: Path):
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf import gguf_tokenizer_mapping as m
    from transformers.integrations.gguf.reader import read_gguf_metadata

    metadata, _ = read_gguf_metadata(str(gguf_path), ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"))
    architecture = metadata["general.architecture"]
    tok = {name: metadata[f"tokenizer.{key}"] for key, name in m.GGUF_TOKENIZER_MAPPING["tokenizer"].items()
           if f"tokenizer.{key}" in metadata}
    n = len(tok["tokens"])
    for name, key in m._SPECIAL_TOKENS.items():
        field = m.GGUF_TOKENIZER_MAPPING["tokenizer"].get(f"ggml.{key}")
        token_id = metadata.get(f"tokenizer.ggml.{key}")
        if token_id is not None and not 0 <= token_id < n and field:
            tok.pop(field, None)
    backend, _ = m.convert_gguf_tokenizer(architecture, tok)
    special = {}
    for name, key in m._SPECIAL_TOKENS.items():
        token_id = metadata.get(f"tokenizer.ggml.{key}")
        if token_id is not None and 0 <= token_id < n:
            special[name] = tok["tokens"][token_id]
    return PreTrainedTokenizerFast(tokenizer_object=backend, **special)
