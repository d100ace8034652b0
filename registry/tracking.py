"""MLflow tracking: one MLflow run per `qrecipe run`, in one experiment per base model.

The default store is embedded: a SQLite tracking database and an artifact folder under
paths.root/mlflow (tracking.uri=null); a tracking server is used by setting tracking.uri
(or MLFLOW_TRACKING_URI). The embedded store is created once, under a file lock, into a
temporary file that is renamed into place, so processes that start together never run
MLflow's schema migrations against the same file; it is put in WAL mode, so the UI reading
it does not block runs writing to it.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from qrecipe.engine.config.settings import Settings
from qrecipe.engine.errors import QRecipeError

log = logging.getLogger(__name__)
PROBE_SECONDS = 5.0  # how long a tracking server gets to answer before a run refuses to start


class TrackingError(QRecipeError):
    """The MLflow tracking store cannot be reached or used."""


def check_reachable(settings) -> None:
    """A tracking server must answer before a run records anything: MLflow's own client retries a
    refused connection for minutes, so one request with a short timeout decides first. Any HTTP
    answer (even an error status) means the server is there; the embedded store needs no check."""
    import urllib.error
    import urllib.request

    uri = tracking_uri(settings)
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=PROBE_SECONDS):
            return
    except urllib.error.HTTPError:  # it answered
        return
    except (urllib.error.URLError, OSError, ValueError) as e:
        why = getattr(e, "reason", None) or e
        raise TrackingError(f"tracking.uri: the MLflow server {uri} does not answer ({why}); start it, fix "
                            f"tracking.uri (or MLFLOW_TRACKING_URI), or set tracking=off") from None


def close_run(settings, run_id: str, status: str) -> None:
    """End an MLflow run left RUNNING by a process that died or was killed (FAILED or KILLED);
    best effort, as the run's own record says what happened."""
    try:
        client = client_for(settings)
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, status)
    except Exception as e:  # noqa: BLE001
        log.warning("could not mark MLflow run %s %s: %s", run_id, status, e)

_MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
_BATCH = 100  # MLflow's limit on params per log_batch


def _local_root(settings: Settings) -> Path:
    return Path(settings.paths.root).resolve() / "mlflow"


def tracking_uri(settings: Settings) -> str:
    return settings.tracking.uri or f"sqlite:///{_local_root(settings) / 'mlflow.db'}"


def artifact_root(settings: Settings) -> str | None:
    """Where new experiments keep artifacts: the configured root, the local folder for the
    embedded store, or None to let a tracking server decide."""
    if settings.tracking.artifact_root:
        root = settings.tracking.artifact_root
        return root if "://" in root else Path(root).resolve().as_uri()
    if settings.tracking.uri is None:
        return (_local_root(settings) / "artifacts").as_uri()
    return None


def experiment_name(settings: Settings, model: str) -> str:
    return f"{settings.tracking.experiment_prefix}{model}"


def _quiet_mlflow() -> None:
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def ensure_store(uri: str, artifacts: str | None) -> None:
    """Create an embedded SQLite store once (no-op for servers and existing stores)."""
    if not uri.startswith("sqlite:///"):
        return
    db = Path(uri[len("sqlite:///"):])
    if db.is_file():
        return
    from filelock import FileLock

    _quiet_mlflow()
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(db) + ".lock"):
        if db.is_file():
            return
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        tmp = db.with_name(f".{db.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            store = SqlAlchemyStore(f"sqlite:///{tmp}", artifacts or db.parent.joinpath("artifacts").as_uri())
            store.engine.dispose()
            import sqlite3

            conn = sqlite3.connect(tmp)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.close()  # the last connection closing checkpoints the WAL, so one file is renamed
            tmp.rename(db)
        finally:
            tmp.unlink(missing_ok=True)


def client_for(settings: Settings):
    """An MlflowClient on this config's store (created on first use)."""
    _quiet_mlflow()
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(settings)
    ensure_store(uri, artifact_root(settings))
    return MlflowClient(tracking_uri=uri)


# MLflow 3's UI opens an experiment on its GenAI pages (Traces) unless the experiment says it is
# a machine-learning one; qrecipe's experiments hold runs, params and metrics, so they say so.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def runs_table_url(address: str, experiment: str) -> str:
    """The experiment's runs table in the MLflow UI at `address` (MLflow 3's route)."""
    return f"{address.rstrip('/')}/#/experiments/{experiment}/runs"


def experiment_id(client, name: str, artifacts: str | None) -> str:
    """The experiment's id, creating it if needed (a concurrent creator may win the race)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.tags.get("mlflow.experimentKind") is None:  # made before qrecipe set the kind
            client.set_experiment_tag(found.experiment_id, *next(iter(EXPERIMENT_KIND.items())))
        return found.experiment_id
    location = f"{artifacts.rstrip('/')}/{name}" if artifacts else None
    try:
        return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
    except MlflowException:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def flatten(node: Any, prefix: str) -> dict[str, str]:
    """{'recipe.rules.mlp.scheme': 'W4A16', ...}; lists become JSON text."""
    out: dict[str, str] = {}
    if isinstance(node, dict):
        for k, v in node.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(node, (list, tuple)):
        out[prefix] = json.dumps(node, default=str)
    else:
        out[prefix] = str(node)
    return out


def _param_key(key: str) -> str:
    return "".join(c if c.isalnum() or c in "_-./ :" else "_" for c in key)


def numeric_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and v == v}


def git_commit() -> str | None:
    """The commit of the qrecipe checkout this runs from (with -dirty if it has changes)."""
    from qrecipe.engine.config.resolvers import source_root

    root = source_root()
    if root is None:
        return None
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("qrecipe", "torch", "transformers", "mlflow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


class MlflowRun:
    """One MLflow run, started RUNNING and ended FINISHED or FAILED."""

    def __init__(self, settings: Settings, model: str, run_name: str, tags: dict[str, str]):
        self.client = client_for(settings)
        self.uri = tracking_uri(settings)
        exp = experiment_id(self.client, experiment_name(settings, model), artifact_root(settings))
        self.run_id = self.client.create_run(exp, run_name=run_name, tags=tags).info.run_id
        self.experiment_id = exp

    def log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(_param_key(k), str(v)[:_MAX_PARAM_CHARS]) for k, v in params.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, params=items[i:i + _BATCH])

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(_param_key(k), v, now, 0) for k, v in numeric_metrics(metrics).items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)

    def rename(self, run_name: str) -> None:
        self.client.update_run(self.run_id, name=run_name)

    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)
