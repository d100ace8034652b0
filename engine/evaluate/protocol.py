"""The eval protocol of a run: what its numbers were measured on, so that only runs measured
alike are compared, gated and reported together.

    texts     each eval text's name, split, format and field, and its content: the file's size
              and SHA-256 (not its path or time, so a copy on another machine is the same text),
              or the hub dataset it comes from where there is no local file
    windows   eval.windows x eval.seq_len tokens per text; eval.kl_topk (the KL's support)
    tasks     families, prompts per family, generated and reference tokens, the prompt limit,
              the chat-template choice and the task files' contents (and the built-in JSON cases)
    speed     the timed workload (prompt_len x batch_size prefill; decode_batch_size x new_tokens
              steps after context_len tokens), or null when speed is not measured
    lm_eval   (only when eval.lm_eval names tasks) the tasks, the item limit, local or hub tasks,
              the lm-eval version and the local task files' contents
    device    cpu, or the GPU's name; dtype the model ran in

Two runs have the same protocol exactly when these are equal; `protocol_hash` names it (12 hex
characters). Not part of it: the number of timing repeats and the noise limit (they change how
precisely speed is known, not what was measured), batch sizes of the quality passes (they do
not change the numbers), and the model (a protocol is shared by every model's variants).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from ..config.settings import DataSpec, Settings
from .forward import device_label
from .json_tasks import json_cases
from .lm_eval_tasks import data_files

_DIGESTS: dict[tuple[str, int, int], dict[str, Any]] = {}


def file_digest(path: str | Path) -> dict[str, Any] | None:
    """{"bytes", "sha256"} of a file's content (cached by path, size and modification time);
    None when there is no such file."""
    p = Path(path)
    if not p.is_file():
        return None
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with p.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[key] = {"bytes": st.st_size, "sha256": h.hexdigest()[:16]}
    return _DIGESTS[key]


def _text(data: DataSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"name": data.name, "split": data.split, "format": data.format, "field": data.field,
                           "file": file_digest(data.path)}
    if out["file"] is None and data.hub is not None:
        out["hub"] = dataclasses.asdict(data.hub)
    return out


def eval_protocol(settings: Settings, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    ev = settings.eval
    t, s = ev.tasks, ev.speed
    tasks = None
    if t.families:
        tasks = {"families": list(t.families), "prompts": t.prompts, "new_tokens": t.new_tokens,
                 "reference_tokens": t.reference_tokens, "max_prompt_tokens": t.max_prompt_tokens,
                 "chat_template": t.chat_template,
                 "files": {k: file_digest(getattr(t, k)) for k in ("gsm8k", "humaneval", "mbpp")},
                 "json_cases": hashlib.sha256(json.dumps(json_cases()).encode()).hexdigest()[:16]}
    speed = None
    if s.enabled:
        speed = {"prompt_len": s.prompt_len, "batch_size": s.batch_size, "context_len": s.context_len,
                 "decode_batch_size": s.decode_batch_size, "new_tokens": s.new_tokens}
    protocol = {"texts": [_text(d) for d in ev.all_texts().values()], "seq_len": ev.seq_len,
                "windows": ev.windows, "kl_topk": ev.kl_topk, "tasks": tasks, "speed": speed,
                "device": device_label(torch.device(device)), "dtype": str(dtype).replace("torch.", "")}
    lm = ev.lm_eval
    if lm.enabled:  # absent otherwise, so runs without lm-eval keep the protocol they had
        from importlib.metadata import version

        protocol["lm_eval"] = {"tasks": list(lm.tasks), "limit": lm.limit, "source": lm.source,
                               "version": version("lm-eval"), "files": [file_digest(p) for p in data_files(lm)]}
    return protocol


def protocol_hash(protocol: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(protocol, sort_keys=True, default=str).encode()).hexdigest()[:12]


def describe_protocol(protocol: dict[str, Any] | None) -> str:
    """One line a person reads, e.g. `wikitext2 32x512 tokens; tasks prose,math x6; speed 1x256 /
    1x8 at 256; cpu float32`."""
    if not protocol:
        return "not recorded (a run from before protocols were recorded)"
    texts = ", ".join(f"{t.get('name', '?')}" + (f" (sha256 {t['file']['sha256'][:8]})" if t.get("file") else "")
                      for t in protocol.get("texts", [])) or "no text"
    parts = [f"{texts} {protocol.get('windows', '?')}x{protocol.get('seq_len', '?')} tokens"]
    tasks = protocol.get("tasks")
    parts.append(f"tasks {','.join(tasks['families'])} x{tasks['prompts']}" if tasks else "no tasks")
    s = protocol.get("speed")
    parts.append(f"speed prefill {s['batch_size']}x{s['prompt_len']}, decode {s['decode_batch_size']}x"
                 f"{s['new_tokens']} at {s['context_len']}" if s else "no speed")
    lm = protocol.get("lm_eval")
    if lm:
        parts.append(f"lm-eval {','.join(lm['tasks'])} x{lm['limit'] or 'all'}")
    parts.append(f"{protocol.get('device', '?')} {protocol.get('dtype', '?')}")
    return "; ".join(parts)
