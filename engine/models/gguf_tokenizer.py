"""Tokenizer from a GGUF file whose metadata transformers rejects.

Some GGUF files (llama2.c exports such as stories260K) store pad_token_id = 2**32 - 1,
which makes transformers index past the vocabulary. We read the metadata the same way,
drop special-token ids that are out of range, and let transformers build the tokenizer.
"""

from __future__ import annotations

from pathlib import Path


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
