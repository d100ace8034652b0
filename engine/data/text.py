"""Read a dataset (plain text or jsonl) and cut it into token windows.

Local files are used where they exist; otherwise, for datasets that name a hub source and
when the `datasets` package is installed and the hub is not disabled (HF_HUB_OFFLINE), the
hub copy is used; otherwise a clear error says what to pass.
"""

from __future__ import annotations

import codecs
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


SNIFF_BYTES = 1 << 16  # what check_text_file reads of a file: enough to tell text from binary


def _not_utf8(path: Path, field: str, e: UnicodeDecodeError) -> ConfigError:
    return ConfigError(f"{field}: {path} is not UTF-8 text (the byte at offset {e.start} is "
                       f"{e.object[e.start]:#04x}); convert it (e.g. iconv -f latin1 -t utf-8 FILE > FILE.txt) or "
                       f"pass another file")


def check_text_file(path: Path, field: str) -> None:
    """A readable UTF-8 text file (its first SNIFF_BYTES looked at; gzip files are taken as they are),
    else one line naming the field and the fix."""
    if path.is_dir():
        raise ConfigError(f"{field}: {path} is a folder, not a file; pass {field}=FILE")
    if path.suffix == ".gz":
        return
    try:
        with path.open("rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError as e:
        raise ConfigError(f"{field}: cannot read {path} ({e.strerror}); check its permissions") from None
    if b"\0" in head:
        raise ConfigError(f"{field}: {path} is a binary file (it holds NUL bytes), not text; pass a UTF-8 plain text "
                          f"or jsonl file")
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)  # a character cut at the end is fine
    except UnicodeDecodeError as e:
        raise _not_utf8(path, field, e) from None


def check_data(spec: DataSpec, where: str) -> None:
    """Fail before any model loads if the data cannot be read."""
    path = Path(spec.path)
    if path.exists():
        check_text_file(path, f"{where}.path")
        return
    if _hub_usable(spec):
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
    try:
        return _read_documents(spec, path, where)
    except UnicodeDecodeError as e:  # past what check_text_file looked at
        raise ConfigError(f"{where}.path: {path} is not UTF-8 text beyond its first {SNIFF_BYTES} bytes ({e.reason}); "
                          f"convert it (e.g. iconv -f latin1 -t utf-8 FILE > FILE.txt) or pass another file") from None


def _read_documents(spec: DataSpec, path: Path, where: str) -> list[str]:
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
