"""Process-wide set-up shared by every qrecipe entry point (the CLI, a job's attempt process):
quiet libraries, and SIGTERM unwinding like Ctrl-C."""

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
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("qrecipe").setLevel(logging.INFO)


class Terminated(BaseException):
    """SIGTERM arrived (a job being cancelled, a container stopping): unwind like Ctrl-C, so a
    run in progress is recorded as failed and its staged folder removed."""

    exit_code = 128 + signal.SIGTERM


def raise_terminated(signum, frame) -> None:
    """A SIGTERM handler: raise Terminated in the main thread."""
    raise Terminated("terminated by SIGTERM")
