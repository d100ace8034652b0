"""Process-wide set-up shared by every qrecipe entry point (the CLI, a job's attempt process):
quiet libraries, SIGTERM unwinding like Ctrl-C, and the exceptions that stop a run without it
having failed (Terminated, Cancelled)."""

from __future__ import annotations

import logging
import os
import signal


def quiet_libraries() -> None:
    """Set before torch loads. Idle OpenMP threads sleep instead of spinning: on a shared or
    oversubscribed CPU a spinning thread that loses its core stalls every parallel region until
    it is scheduled again (with 6 runnable threads on 2 cores, SmolLM2 decode ran 7x slower with
    spinning); on an idle CPU sleeping costs a few microseconds per region."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from .progress import stderr_is_terminal

    if not stderr_is_terminal():  # the libraries' own bars (transformers, the hub) too: engine/progress.py
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("qrecipe").setLevel(logging.INFO)


class Terminated(BaseException):
    """SIGTERM arrived (a job being cancelled, a container stopping): unwind like Ctrl-C, so a
    run in progress is recorded as failed and its staged folder removed."""

    exit_code = 128 + signal.SIGTERM


class Cancelled(BaseException):
    """The caller of a run cancelled it (a job's cancel, seen at a stage boundary or when the run
    is about to be recorded): it unwinds like Terminated, and a recorder marks the run killed."""

    exit_code = 128 + signal.SIGTERM


def raise_terminated(signum, frame) -> None:
    """A SIGTERM handler: raise Terminated in the main thread."""
    raise Terminated("terminated by SIGTERM")


def stopped(error: BaseException) -> bool:
    """Whether the run was stopped from outside (Ctrl-C, SIGTERM, a cancel) rather than failing."""
    return isinstance(error, (KeyboardInterrupt, Terminated, Cancelled))
