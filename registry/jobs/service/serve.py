"""`qrecipe serve` and `qrecipe worker`: the operator's settings, a pool of worker processes, and
the HTTP service in front of the queue."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from qrecipe.engine.errors import ConfigError

from ..attempt import PARENT_PID, die_with_parent
from ..config import JobsConfig, jobs_config, operator_sections, service_config, with_operator_groups


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Operator:
    """The settings `qrecipe serve|worker` run with: the composed config (with the jobs and
    service groups), and the registry database holding the queue."""

    settings: object
    jobs: JobsConfig
    registry_url: str

    @classmethod
    def load(cls, items: list[str]) -> "Operator":
        from qrecipe.engine.config import compose, load_settings

        from ...db import registry_url

        settings = load_settings(compose(with_operator_groups(items)))
        if not settings.registry.enabled:
            raise ConfigError("registry.enabled: jobs live in the registry database; drop registry=off")
        return cls(settings, jobs_config(settings.sections), registry_url(settings))

    def sections(self) -> dict:
        return operator_sections(self.settings.raw)

    def safe_url(self) -> str:
        from sqlalchemy.engine import make_url

        return make_url(self.registry_url).render_as_string(hide_password=True)


class WorkerPool:
    """N `qrecipe worker` processes, restarted if one dies. They are started, watched and stopped
    from one thread: each asks Linux to kill it when that thread ends (PR_SET_PDEATHSIG), so
    killing the pool's process ends its workers too."""

    def __init__(self, count: int, items: list[str], grace: float):
        self.count, self.items, self.grace = count, items, grace
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._supervise, name="worker-pool", daemon=True)
        self.procs: list[subprocess.Popen] = []

    def start(self) -> "WorkerPool":
        if self.count:
            self.thread.start()
        return self

    def _spawn(self) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "qrecipe.registry.cli", "worker", "--workers", "1", *self.items]
        return subprocess.Popen(cmd, env={**os.environ, PARENT_PID: str(os.getpid())})

    def _supervise(self) -> None:
        self.procs = [self._spawn() for _ in range(self.count)]
        while not self.stopping.wait(2.0):
            for i, proc in enumerate(self.procs):
                if proc.poll() is not None:
                    say(f"worker process {proc.pid} exited with code {proc.returncode}; starting another")
                    self.procs[i] = self._spawn()
        for proc in self.procs:  # each stops its attempt and hands its job back to the queue
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace + 15
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_port(host: str, port: int) -> None:
    """Before any worker starts: say so in one line if the address is taken."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise ConfigError(f"--port: cannot listen on {host}:{port} ({e.strerror}); pass another --port or "
                              f"--host") from None


def _harden(jobs: JobsConfig) -> None:
    """What a request composes must come from qrecipe's own recipes and this machine's files."""
    if os.environ.pop("QRECIPE_RECIPE_PATH", None):
        say("QRECIPE_RECIPE_PATH is ignored by the service: requests choose among qrecipe's own recipes")
    if not jobs.allow_hub:
        os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"


def serve(items: list[str], host: str | None, port: int | None, workers: int | None) -> int:
    import uvicorn

    from ...db import open_registry
    from ...mirror import ModelRegistryMirror
    from ...protocols import requested_protocol
    from ..submit import Submitter
    from .app import ServiceState, create_app
    from .auth import ENV, load_tokens

    op = Operator.load(items)
    service = service_config(op.settings.sections)
    tokens = load_tokens(service.tokens_file)
    host, port = host or service.host, port or service.port
    count = op.jobs.workers if workers is None else workers
    if count < 0:
        raise ConfigError(f"--workers: {count} is negative; pass 0 or more")
    if not tokens and not _is_loopback(host):
        say(f"no API token configured (service.tokens_file or {ENV}): binding to 127.0.0.1 only, not {host}")
        host = "127.0.0.1"
    _check_port(host, port)
    _harden(op.jobs)
    engine = open_registry(op.registry_url)  # migrated before any worker starts
    state = ServiceState(engine=engine, jobs=op.jobs, service=service, submitter=Submitter(op.jobs, op.sections()),
                         tokens=tokens, sections=op.settings.sections,
                         mirror=ModelRegistryMirror.from_settings(op.settings),
                         default_protocol=requested_protocol(op.settings)[0])
    app = create_app(state)
    pool = WorkerPool(count, items, op.jobs.cancel_grace_seconds).start()
    access = (f"{len(tokens)} token(s)" if tokens else
              "no tokens configured: loopback only, and every local caller may submit and cancel")
    say(f"qrecipe service on http://{host}:{port} (API docs at /docs); {count} worker process(es), executor "
        f"{op.jobs.executor}; queue in {op.safe_url()}; {access}")
    # uvicorn stops on SIGINT or SIGTERM, puts back the handlers it found and raises the signal
    # again: here that is the normal way to stop, so the SIGTERM it raises again is let go.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        pool.stop()
    say("qrecipe service stopped")
    return 0


def work(items: list[str], workers: int | None) -> int:
    """`qrecipe worker`: one worker in this process, or a pool of them."""
    die_with_parent()  # a worker of `qrecipe serve` ends with it
    op = Operator.load(items)
    count = workers or 1
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if count > 1:
            pool = WorkerPool(count, items, op.jobs.cancel_grace_seconds).start()
            say(f"{count} workers on the queue in {op.safe_url()}; Ctrl-C stops them")
            stop.wait()
            pool.stop()
            return 0
        from ...db import open_registry
        from ..worker import Worker

        engine = open_registry(op.registry_url)
        worker = Worker(engine, op.registry_url, op.jobs, op.sections())
        worker.stopping = stop
        say(f"worker {worker.id}: executor {op.jobs.executor}, queue in {op.safe_url()}, lease "
            f"{op.jobs.lease_seconds:g}s")
        worker.run_forever()
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
