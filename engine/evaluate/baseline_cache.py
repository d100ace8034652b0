"""The baseline's outputs, computed once per (model, eval settings, device) and reused by
every variant of that model.

Stored under paths.root/baselines/<model>-<key>/ (the registry's baselines table points at
it): reference.pt holds, per eval text, the baseline's top-k log-probs and token ids per
position (divergence.py) and, per task prompt, its greedy continuation, its own choices and
the reference answer's log-likelihood (task_metrics.py), and, when eval.lm_eval names tasks,
its lm-eval answer per item (lm_eval_score.py); meta.json says what the key covers.
A folder is written under a temporary name and renamed into place under a file lock, so
concurrent runs never read half a cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config.settings import Settings
from ..models.loading import locate
from .divergence import TextReference
from .forward import device_label
from .json_tasks import json_cases
from .lm_eval_score import TaskScore
from .lm_eval_tasks import data_files
from .task_metrics import TaskBaseline

# Bump when what is stored, or how it is computed, changes: old caches are then not reused.
BASELINE_FORMAT = 1
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".json", ".model")


@dataclass
class BaselineOutputs:
    texts: dict[str, TextReference]
    tasks: TaskBaseline | None
    task_sources: list[str]  # which prompts, in order (a cache must match the prompts it scores)
    lm_eval: dict[str, TaskScore] | None = None  # per lm-eval task, when eval.lm_eval names tasks


def _file_stamp(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        return {"path": str(p), "missing": True}
    st = p.stat()
    return {"path": str(p.resolve()), "size": st.st_size, "mtime": int(st.st_mtime)}


def model_fingerprint(settings: Settings) -> dict[str, Any]:
    """Identifies the baseline's weights: where they come from and the files' sizes and times."""
    spec = settings.model
    loc = locate(spec)
    out: dict[str, Any] = {"name": spec.name, "source": loc.source, "gguf_file": loc.gguf_file,
                           "revision": spec.revision}
    if loc.local:
        folder = Path(loc.source)
        names = [loc.gguf_file] if loc.gguf_file else sorted(p.name for p in folder.iterdir()
                                                              if p.suffix in _WEIGHT_SUFFIXES)
        out["files"] = [_file_stamp(folder / n) for n in names]
    return out


def baseline_key_parts(settings: Settings, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    ev = settings.eval
    tasks = dataclasses.asdict(ev.tasks)
    return {
        "format": BASELINE_FORMAT,
        "model": model_fingerprint(settings),
        "device": device_label(device),
        "dtype": str(dtype).replace("torch.", ""),
        "torch": torch.__version__.split("+")[0],
        "seq_len": ev.seq_len, "windows": ev.windows, "batch_size": ev.batch_size, "kl_topk": ev.kl_topk,
        "texts": {name: {**dataclasses.asdict(d), "stamp": _file_stamp(d.path)} for name, d in ev.all_texts().items()},
        "tasks": {**tasks, "stamps": [_file_stamp(getattr(ev.tasks, k)) for k in ("gsm8k", "humaneval", "mbpp")],
                  "json_cases": hashlib.sha256(json.dumps(json_cases()).encode()).hexdigest()[:16]},
        **_lm_eval_part(settings),
    }


def _lm_eval_part(settings: Settings) -> dict[str, Any]:
    """What changes the baseline's lm-eval answers; nothing when lm-eval is off, so turning it on
    does not change the key of runs without it."""
    spec = settings.eval.lm_eval
    if not spec.enabled:
        return {}
    from importlib.metadata import version

    return {"lm_eval": {**dataclasses.asdict(spec), "version": version("lm-eval"),
                        "stamps": [_file_stamp(p) for p in data_files(spec)]}}


def baseline_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_folder(settings: Settings, key: str) -> Path:
    return Path(settings.paths.root).resolve() / "baselines" / f"{settings.model.name}-{key}"


class UnreadableCache(Exception):
    """A cached baseline exists but cannot be used (damaged file, older format); its message
    says why. The run recomputes and replaces it, and says so."""


def load_baseline(folder: Path) -> BaselineOutputs | None:
    """The cached outputs, or None when there are none; UnreadableCache when they cannot be used."""
    import pickle
    import zipfile

    ref = folder / "reference.pt"
    if not ref.is_file():
        return None
    try:
        state = torch.load(ref, map_location="cpu", weights_only=True)
        if state.get("format") != BASELINE_FORMAT:
            raise UnreadableCache(f"format {state.get('format')}, this qrecipe writes {BASELINE_FORMAT}")
        tasks = TaskBaseline.from_state(state["tasks"]) if state.get("tasks") else None
        lm_eval = {t: TaskScore.from_state(s) for t, s in state["lm_eval"].items()} if state.get("lm_eval") else None
        return BaselineOutputs({n: TextReference.from_state(s) for n, s in state["texts"].items()}, tasks,
                               list(state["task_sources"]), lm_eval)
    except (RuntimeError, EOFError, OSError, KeyError, TypeError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        raise UnreadableCache(f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}") from e


def save_baseline(folder: Path, outputs: BaselineOutputs, meta: dict[str, Any], replace: bool = False) -> None:
    """Write once, atomically; a concurrent writer of the same key leaves the first copy.
    `replace`: the existing copy could not be used and is replaced."""
    from filelock import FileLock

    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if (folder / "reference.pt").is_file() and not replace:
            return
        if replace and folder.exists():
            shutil.rmtree(folder)
        tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is as readable as the rest of paths.root
        try:
            torch.save({"format": BASELINE_FORMAT, "texts": {n: r.to_state() for n, r in outputs.texts.items()},
                        "tasks": outputs.tasks.to_state() if outputs.tasks else None,
                        "task_sources": outputs.task_sources,
                        "lm_eval": {t: r.to_state() for t, r in outputs.lm_eval.items()} if outputs.lm_eval else None},
                       tmp / "reference.pt")
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
            tmp.rename(folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
