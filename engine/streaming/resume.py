"""What lets a killed streamed run continue from its last finished block.

A streamed run works in `run.resume_dir/<model>-<plan hash>/`:

    state.json     the fingerprint, how many blocks are done, their notes, which activation
                   generation holds the next block's inputs (written last, atomically: the
                   commit point of a block)
    shards/        the checkpoint's finished shards (writer.py)
    activations/   the next block's inputs (activations.py)

The fingerprint is what makes those files valid: the model's weight files (names, sizes,
modification times), the plan hash, the calibration data and settings, the dtype, the
device type and torch's version. A run with the same fingerprint resumes; one with a
different fingerprint says what differs and starts over. The folder sits beside the runs,
never inside a run's staging folder (which a failed run deletes), so a job whose worker died
finds it when the job runs again with the same config. It is removed once the run succeeds.
A file lock (released by the kernel when the process dies) keeps two runs out of one folder.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..files import safe_name

STATE_FILE = "state.json"
RESUME_FORMAT = 1


@dataclass
class ResumeState:
    folder: Path
    fingerprint: dict[str, Any]
    done: int = 0  # blocks finished (their shards written)
    notes: list[str] = field(default_factory=list)
    inputs_gen: int | None = None  # activation generation holding block `done`'s inputs
    resumed: bool = False
    message: str = ""  # what happened to an earlier state, for the run's log

    @property
    def shards(self) -> Path:
        return self.folder / "shards"

    @property
    def activations(self) -> Path:
        return self.folder / "activations"

    def save(self) -> None:
        tmp = self.folder / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps({"fingerprint": self.fingerprint, "done": self.done, "notes": self.notes,
                                   "inputs_gen": self.inputs_gen}, indent=2, default=str))
        os.replace(tmp, self.folder / STATE_FILE)


def resume_folder(root: Path, model_name: str, plan_hash: str) -> Path:
    return Path(root).resolve() / f"{safe_name(model_name)}-{plan_hash[:16]}"


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


class ResumeLock:
    """Held for as long as a run works in the folder."""

    def __init__(self, folder: Path):
        from filelock import FileLock, Timeout

        self._timeout = Timeout
        self.lock = FileLock(str(folder) + ".lock")

    def acquire(self, folder: Path) -> None:
        try:
            self.lock.acquire(timeout=0)
        except self._timeout:
            raise ConfigError(f"run.resume_dir: another run is streaming into {folder} (same model and plan); wait "
                              f"for it to finish or set run.resume_dir to another folder") from None

    def release(self) -> None:
        self.lock.release()


def open_state(folder: Path, fingerprint: dict[str, Any]) -> ResumeState:
    """The state to continue from: the saved one if its fingerprint matches, else a fresh one
    (the folder emptied); `message` says which and why."""
    fingerprint = {"format": RESUME_FORMAT, **fingerprint}
    state_file = folder / STATE_FILE
    message = ""
    if state_file.is_file():
        try:
            saved = json.loads(state_file.read_text())
        except ValueError:
            saved = None
        if saved is not None and saved.get("fingerprint") == json.loads(json.dumps(fingerprint, default=str)):
            return ResumeState(folder, fingerprint, done=int(saved["done"]), notes=list(saved.get("notes", [])),
                               inputs_gen=saved.get("inputs_gen"), resumed=True,
                               message=f"resuming from block {saved['done']} (finished blocks kept in {folder})")
        what = ", ".join(_differences(saved["fingerprint"], fingerprint)) if saved else "unreadable state"
        message = f"resume state in {folder} does not match this run ({what} differ); starting over"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    state = ResumeState(folder, fingerprint, message=message)
    state.shards.mkdir()
    state.activations.mkdir()
    state.save()
    return state
