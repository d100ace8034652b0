"""The embedded MLflow store: created once, safe for runs logging at the same time, browsable
with `qrecipe ui`."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from local_servers import free_port, stop_process

from qrecipe.registry.tracking import ensure_store, experiment_id, flatten


def _log_one_run(args: tuple[str, int]) -> str:
    uri, worker = args
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    ensure_store(uri, None)
    client = MlflowClient(uri)
    exp = experiment_id(client, "qrecipe-shared", Path(uri[len("sqlite:///"):]).parent.joinpath("art").as_uri())
    run = client.create_run(exp, tags={"worker": str(worker)}).info.run_id
    for step in range(20):
        client.log_batch(run, metrics=[Metric("m", float(step), 0, step)])
    client.log_batch(run, params=[Param("worker", str(worker))])
    client.set_terminated(run, "FINISHED")
    return run


def test_concurrent_processes_share_one_store(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        runs = pool.map(_log_one_run, [(uri, i) for i in range(3)])
    client = MlflowClient(uri)
    [exp] = [e for e in client.search_experiments() if e.name == "qrecipe-shared"]
    found = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_id for r in found) == sorted(runs)
    assert all(r.info.status == "FINISHED" and r.data.metrics["m"] == 19.0 for r in found)
    assert all(len(client.get_metric_history(r, "m")) == 20 for r in runs)
    assert sorted(p.name for p in (tmp_path / "mlflow").iterdir() if not p.name.startswith("mlflow.db")) == []


def test_flatten_makes_dotted_params():
    node = {"base": {"scheme": "W4A16", "group_size": 64}, "rules": {"mlp": {"match": "re:.*mlp"}}, "ignore": []}
    assert flatten(node, "recipe") == {"recipe.base.scheme": "W4A16", "recipe.base.group_size": "64",
                                       "recipe.rules.mlp.match": "re:.*mlp", "recipe.ignore": "[]"}


@pytest.mark.slow
def test_ui_serves_the_store_and_prints_each_experiments_runs_table(tmp_path, monkeypatch):
    from conftest import settings_for

    from qrecipe.registry.tracking import artifact_root, client_for, experiment_name

    monkeypatch.setenv("QRECIPE_HOME", str(tmp_path / "home"))
    settings = settings_for()
    client = client_for(settings)
    exp = experiment_id(client, experiment_name(settings, "tiny"), artifact_root(settings))
    # MLflow 3 opens an experiment of this kind on its runs, not on its GenAI Traces page
    assert client.get_experiment(exp).tags["mlflow.experimentKind"] == "custom_model_development"
    port = free_port()
    env = dict(os.environ, QRECIPE_HOME=str(tmp_path / "home"))
    proc = subprocess.Popen([sys.executable, "-m", "qrecipe.registry.cli", "ui", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()  # printed once the server answers
        assert line.startswith(f"MLflow UI: http://127.0.0.1:{port}"), line
        assert proc.stdout.readline().startswith("each model's runs table")
        assert proc.stdout.readline() == f"  qrecipe-tiny runs: http://127.0.0.1:{port}/#/experiments/{exp}/runs\n"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as page:
            assert page.status == 200 and b"MLflow" in page.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=5",
                                    timeout=30) as api:
            assert api.status == 200
        assert (tmp_path / "home" / "mlflow" / "mlflow.db").is_file()
    finally:
        stop_process(proc)
    deadline = time.monotonic() + 10  # the server's own worker goes with it
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
        except OSError:
            break
        time.sleep(0.5)
    else:
        pytest.fail("the MLflow server kept running after qrecipe ui was stopped")
