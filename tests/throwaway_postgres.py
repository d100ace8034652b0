"""A throwaway PostgreSQL cluster on loopback for the registry tests.

As root (CI, developer containers) Debian's pg_createcluster/pg_ctlcluster create and start a
cluster owned by the postgres user (initdb itself refuses root); as another user, initdb and
pg_ctl run directly in a temporary folder. QRECIPE_TEST_POSTGRES_URL points the tests at an
existing server instead (its role needs CREATEDB: each test gets a database of its own);
QRECIPE_TEST_POSTGRES=skip skips them. Where none of that is possible the reason is returned, and the
PostgreSQL tests are skipped with it.

Autovacuum is off: a worker vacuuming a test's fresh database is a process of no role, which a
non-superuser's `DROP DATABASE ... WITH (FORCE)` may not terminate (CI once failed on exactly that).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from local_servers import free_port

USER, PASSWORD, DATABASE = "qrecipe", "qrecipe-test", "qrecipe_test"


@dataclass
class Cluster:
    url: str
    stop: Callable[[], None]


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120, **kw)


def _server_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def _wait_ready(bin_dir: Path, port: int) -> None:
    for _ in range(120):
        if subprocess.run([str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                          capture_output=True).returncode == 0:
            return
        time.sleep(0.5)
    raise RuntimeError(f"PostgreSQL on port {port} did not become ready")


def _setup_sql(bin_dir: Path, port: int, prefix: list[str], host: str) -> None:
    psql = prefix + [str(bin_dir / "psql"), "-h", host, "-p", str(port), "-U", "postgres", "-d", "postgres",
                     "-v", "ON_ERROR_STOP=1", "-c", f"CREATE ROLE {USER} LOGIN CREATEDB PASSWORD '{PASSWORD}'",
                     "-c", f"CREATE DATABASE {DATABASE} OWNER {USER}"]
    _run(psql)


def _as_root(bin_dir: Path) -> Cluster:
    version = bin_dir.parent.name
    name = f"qrecipe_test_{os.getpid()}"
    port = free_port()
    _run(["pg_createcluster", "-q", "-p", str(port), "--start-conf=manual", "-o", "listen_addresses=localhost",
          "-o", "fsync=off", "-o", "max_connections=100", "-o", "autovacuum=off", version, name])

    def stop() -> None:
        subprocess.run(["pg_dropcluster", "--stop", version, name], capture_output=True, timeout=120)

    try:
        _run(["pg_ctlcluster", version, name, "start"])
        _wait_ready(bin_dir, port)
        _setup_sql(bin_dir, port, ["runuser", "-u", "postgres", "--"], "/var/run/postgresql")
    except Exception:
        stop()
        raise
    return Cluster(f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{port}/{DATABASE}", stop)


def _as_user(bin_dir: Path) -> Cluster:
    folder = Path(tempfile.mkdtemp(prefix="qrecipe-pg-"))
    port = free_port()

    def stop() -> None:
        subprocess.run([str(bin_dir / "pg_ctl"), "-D", str(folder / "data"), "-m", "immediate", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)

    try:
        _run([str(bin_dir / "initdb"), "-D", str(folder / "data"), "-U", "postgres", "--auth=trust"])
        _run([str(bin_dir / "pg_ctl"), "-D", str(folder / "data"), "-l", str(folder / "log"), "-w", "-o",
              f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c autovacuum=off", "start"])
        _wait_ready(bin_dir, port)
        _setup_sql(bin_dir, port, [], "127.0.0.1")
    except Exception:
        stop()
        raise
    return Cluster(f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{port}/{DATABASE}", stop)


def start_cluster() -> Cluster | str:
    """A running cluster, or the reason there is none."""
    if os.environ.get("QRECIPE_TEST_POSTGRES") == "skip":
        return "QRECIPE_TEST_POSTGRES=skip is set"
    external = os.environ.get("QRECIPE_TEST_POSTGRES_URL")
    if external:
        return Cluster(external, lambda: None)
    bin_dir = _server_bin()
    if bin_dir is None:
        return ("PostgreSQL server binaries not found under /usr/lib/postgresql (install Debian's postgresql "
                "package, as .ci/run does, or set QRECIPE_TEST_POSTGRES_URL)")
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    try:
        if os.geteuid() == 0:
            if shutil.which("pg_createcluster") is None:
                return "running as root but pg_createcluster (postgresql-common) is missing"
            return _as_root(bin_dir)
        return _as_user(bin_dir)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, RuntimeError, OSError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        return f"could not start a throwaway PostgreSQL cluster: {detail.strip().splitlines()[-1] if detail else e}"
