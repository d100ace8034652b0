"""Read a dataset (plain text or jsonl) and cut it into token windows.

Local files are used where they exist; otherwise, for datasets that name a hub source and
when the `datasets` package is installed and the hub is not disabled (HF_HUB_OFFLINE), the
hub copy is used; otherwise a clear error says what to pass.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..config.settings import DataSpec
from ..errors import ConfigError


def _format(spec: DataSpec) -> str:
    if spec.format != "auto":
        return spec.format
    return "jsonl" if Path(spec.path).suffix in (".jsonl", ".json") else "text"


def _hub_usable(spec: DataSpec) -> bool:
    if spec.hub is None or os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return False
    try:
        import datasets  # noqa: F401
    except ImportError:
        return False
    return True


def check_data(spec: DataSpec, where: str) -> None:
    """Fail before any model loads if the data cannot be read."""
    if Path(spec.path).is_file() or _hub_usable(spec):
        return
    hint = " (or install qrecipe[hub] and go online for the hub copy)" if spec.hub else ""
    raise ConfigError(f"{where}.path: file {spec.path!r} does not exist; pass {where}.path=FILE, choose another "
                      f"dataset with data@{where}=NAME, or set QRECIPE_SHARED to the folder holding data/{hint}")


def load_documents(spec: DataSpec, where: str = "data") -> list[str]:
    check_data(spec, where)
    path = Path(spec.path)
    if not path.is_file():
        import datasets

        ds = datasets.load_dataset(spec.hub.id, spec.hub.config, split=spec.hub.split)
        return [row[spec.hub.field] for row in ds]
    if _format(spec) == "text":
        return [path.read_text(encoding="utf-8")]
    docs = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{where}.path: line {lineno} of {path} is not JSON ({e.msg}); "
                                  f"set {where}.format=text for plain text") from None
            if spec.field not in row:
                raise ConfigError(f"{where}.field: line {lineno} of {path} has no key {spec.field!r} "
                                  f"(keys: {', '.join(row)}); set {where}.field=KEY")
            docs.append(str(row[spec.field]))
    return docs


def token_windows(tokenizer, documents: list[str], seq_len: int, windows: int, where: str = "eval") -> torch.Tensor:
    """The first `windows` non-overlapping windows of `seq_len` tokens of the text (documents
    joined by a blank line; no BOS). Tokenizes only as much text as the windows need."""
    needed = seq_len * windows
    text = "\n\n".join(documents)
    chars = min(len(text), needed * 8)
    while True:
        ids = tokenizer(text[:chars], add_special_tokens=False)["input_ids"]
        if len(ids) > needed or chars >= len(text):
            break
        chars = min(len(text), chars * 2)
    if len(ids) < needed:
        have = len(ids) // seq_len
        if have == 0:
            raise ConfigError(f"{where}.seq_len: the text holds only {len(ids)} tokens, fewer than one window of "
                              f"{seq_len}; lower {where}.seq_len or use a longer text")
        raise ConfigError(f"{where}.windows: the text holds {have} windows of {seq_len} tokens, not {windows}; "
                          f"set {where}.windows={have} or lower")
    return torch.tensor(ids[:needed], dtype=torch.long).reshape(windows, seq_len)
