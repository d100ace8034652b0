"""Start the attempt process of a job (attempt.py) and carry what it says to the database.

Its output is buffered and written to job_logs every jobs.log_flush_seconds; its stage and
progress are written on the same beat, each write fenced by the attempt's lease token, so a
stale attempt cannot move a job it no longer holds. Used by the local executor (in the worker's
process) and by the Ray executor (inside the Ray task, on whichever node runs it).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from . import queue
from .attempt import EVENTS_FD, PARENT_PID
from .models import FAILED, SUCCEEDED

log = logging.getLogger(__name__)
_TAIL_LINES = 5


@dataclass
class Outcome:
    """How an attempt ended. retry: it died without saying why (a signal, out of memory), so
    another attempt may succeed; a job that failed with an error of its own is not retried."""

    status: str
    result: dict[str, Any] | None = None
    error: str | None = None
    retry: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "result": self.result, "error": self.error, "retry": self.retry}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Outcome":
        return cls(**d)


class DbSink:
    """Buffers an attempt's log lines and progress; a thread writes them every flush_seconds."""

    def __init__(self, engine: Engine, job_id: int, attempt: int, token: str, flush_seconds: float):
        self.engine, self.job_id, self.attempt, self.token = engine, job_id, attempt, token
        self.flush_seconds = flush_seconds
        self.lines: list[str] = []
        self.fields: dict[str, Any] = {}
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"job-{job_id}-flush", daemon=True)
        self.thread.start()

    def line(self, text: str) -> None:
        with self.lock:
            self.lines.append(text)

    def progress(self, urgent: bool = False, **fields: Any) -> None:
        with self.lock:
            self.fields.update(fields)
        if urgent:  # e.g. the registry run it started: needed if the worker dies right after
            self.flush()

    def flush(self) -> None:
        with self.lock:
            lines, fields = self.lines, self.fields
            self.lines, self.fields = [], {}
        try:
            if lines:
                queue.append_log(self.engine, self.job_id, self.attempt, "".join(lines))
            if fields:
                queue.record_progress(self.engine, self.job_id, self.token, **fields)
        except Exception as e:  # noqa: BLE001 - a database hiccup must not kill the attempt; keep for next time
            log.warning("job %s: could not write its log/progress (%s); retrying", self.job_id, e)
            with self.lock:
                self.lines[:0] = lines
                self.fields = {**fields, **self.fields}

    def _loop(self) -> None:
        while not self.stopped.wait(self.flush_seconds):
            self.flush()

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.flush()


@dataclass
class AttemptProcess:
    """The process running one attempt, with threads reading its output and its events."""

    payload: dict[str, Any]
    sink: DbSink
    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> None:
        read_fd, write_fd = os.pipe()
        env = {**os.environ, **self.env, EVENTS_FD: str(write_fd), PARENT_PID: str(os.getpid()),
               "PYTHONUNBUFFERED": "1"}
        # Its own session: a cancel signals the attempt and anything it started (a memory probe).
        self.proc = subprocess.Popen([sys.executable, "-m", "qrecipe.registry.jobs.attempt"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, pass_fds=(write_fd,),
                                     env=env, start_new_session=True)
        os.close(write_fd)
        self.folders: list[str | None] = []  # the run's staging and final folder, once it says them
        self.outcome: Outcome | None = None
        self.events: list[dict[str, Any]] = []
        self.tail: list[str] = []
        self.readers = [threading.Thread(target=self._read_output, daemon=True),
                        threading.Thread(target=self._read_events, args=(read_fd,), daemon=True)]
        for t in self.readers:
            t.start()
        try:
            self.proc.stdin.write(json.dumps(self.payload).encode())
            self.proc.stdin.close()
        except BrokenPipeError:  # it died at once; wait() reports how
            pass

    def _read_output(self) -> None:
        for raw in self.proc.stdout:
            text = raw.decode("utf-8", errors="replace")
            self.sink.line(text)
            self.tail = (self.tail + [text.rstrip()])[-_TAIL_LINES:]

    def _read_events(self, fd: int) -> None:
        with os.fdopen(fd, "rb") as stream:
            for raw in stream:
                try:
                    event = json.loads(raw)
                except ValueError:
                    continue
                self.events.append(event)
                if event["event"] == "stage":
                    self.sink.progress(stage=str(event["stage"])[:200], progress=float(event["progress"]))
                elif event["event"] == "started":
                    self.folders = [event.get("staging"), event.get("output_dir")]
                    self.sink.progress(urgent=True, variant_id=event.get("variant_id"),
                                       run_number=event.get("run_number"))

    def wait(self, timeout: float) -> Outcome | None:
        """The outcome once the process has ended (within timeout seconds), else None."""
        if self.outcome is not None:
            return self.outcome
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        for t in self.readers:
            t.join(timeout=10)
        self.sink.close()  # the last log lines and progress are written before the outcome is
        self.outcome = self._outcome(code)
        if code != 0:
            self._remove_unrecorded_folder()
        return self.outcome

    def _remove_unrecorded_folder(self) -> None:
        """A run killed before it could clean up (SIGKILL after the grace period) leaves its staged
        folder, or its renamed one if it died between the rename and the write that records it:
        removed here, where the run ran, unless that write happened (the job succeeded)."""
        staging, out = (self.folders + [None, None])[:2]
        if not staging or queue.ended_by(self.sink.engine, self.sink.token) == SUCCEEDED:
            return
        staging = Path(staging)
        if not (staging.name.startswith(".") and staging.name.endswith(".partial")):
            return  # not a folder reserve_output made: leave it
        for folder in (staging, Path(out) if out else None):
            if folder is not None and folder.parent == staging.parent and folder.is_dir():
                log.warning("job %s: removing %s, left by its killed attempt", self.sink.job_id, folder)
                shutil.rmtree(folder, ignore_errors=True)

    def _outcome(self, code: int) -> Outcome:
        last = {e["event"]: e for e in self.events}
        if code == 0 and "result" in last:
            return Outcome(SUCCEEDED, result=last["result"]["result"])
        if "error" in last and code > 0:
            return Outcome(FAILED, error=last["error"]["message"])
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        tail = " | ".join(self.tail[-2:])
        return Outcome(FAILED, error=f"the job's process ended ({how}) without a result" +
                       (f"; last output: {tail[:500]}" if tail else ""), retry=True)

    def stop(self, grace: float) -> None:
        """SIGTERM (the run records itself failed), then SIGKILL after grace seconds."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        self.wait(timeout=10)


def attempt_env(allow_hub: bool) -> dict[str, str]:
    """Without hub access, the libraries that would fetch a model or dataset are told not to."""
    return {} if allow_hub else {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
