"""The MLflow Model Registry mirror of promotions, read back through MLflow's own client: one
registered model per base model, one alias per stage and target that moves with promotion and
rollback, a model version per promoted variant tagged with its id and metrics whose source is
its checkpoint; catching up after MLflow was unavailable; idempotent re-syncs; a tracking
server (which refuses local paths) gets the checkpoint as a run artifact."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from local_servers import free_port, stop_process

from qrecipe.registry.db import open_registry, read_session
from qrecipe.registry.gates import GatePolicy
from qrecipe.registry.mirror import ModelRegistryMirror, pending_slots
from qrecipe.registry.models import StagePointer
from qrecipe.registry.promotion import promote, rollback

POLICY = GatePolicy(base={"max_kl_mean": 0.05})
GOOD = {"ppl_delta_pct": 0.4, "kl_mean": 0.01, "top1_agreement": 0.97}
MODEL = "qrecipe-tiny"  # the registered model of base model `tiny` (experiment prefix + name)


def _holder(engine) -> str:
    with read_session(engine) as s:
        return s.query(StagePointer.variant_id).filter_by(target="cpu", stage="production").scalar()


def _alias_variant(client, alias: str = "production-cpu") -> str:
    return client.get_model_version_by_alias(MODEL, alias).tags["qrecipe.variant_id"]


def test_the_mirror_follows_promotions_and_catches_up_after_mlflow_was_unavailable(settings, tmp_path,
                                                                                   measured_variant):
    from mlflow.tracking import MlflowClient

    engine = open_registry(f"sqlite:///{tmp_path / 'registry.db'}")
    a, b = measured_variant(engine, "a", GOOD), measured_variant(engine, "b", {**GOOD, "kl_mean": 0.02})
    blocker = tmp_path / "mlflow"
    blocker.write_text("a file where the store's folder should be: the store cannot be opened")
    uri = f"sqlite:///{blocker / 'mlflow.db'}"
    mirror = ModelRegistryMirror.from_settings(settings(f"tracking.uri={uri}"))

    first = promote(engine, a, actor="alice", gates=POLICY, mirror=mirror)
    assert first.mirror.startswith("pending: ") and _holder(engine) == a  # the registry is the truth: it stands
    assert [s.label for s in pending_slots(engine)] == ["tiny/cpu/production"]
    assert mirror.sync(engine).pending == {"tiny/cpu/production": first.mirror[len("pending: "):]}

    blocker.unlink()  # MLflow is back
    report = mirror.sync(engine)
    assert (report.synced, report.pending, pending_slots(engine)) == (["tiny/cpu/production"], {}, [])
    client = MlflowClient(uri)
    assert _alias_variant(client) == a == _holder(engine)

    assert promote(engine, b, actor="bob", gates=POLICY, mirror=mirror).mirror == "synced"
    assert _alias_variant(client) == b == _holder(engine)
    assert rollback(engine, "tiny", "cpu", actor="carol", mirror=mirror).mirror == "synced"
    assert _alias_variant(client) == a == _holder(engine)

    versions = {v.tags["qrecipe.variant_id"]: v for v in client.search_model_versions(f"name = '{MODEL}'")}
    assert sorted(versions) == sorted([a, b])
    va = versions[a]
    assert va.source == str((tmp_path / "run-a-cpu-1" / "model").resolve())  # a local store takes the path
    assert (va.tags["metric.kl_mean"], va.tags["qrecipe.recipe"], va.tags["qrecipe.target"]) == ("0.01", "a", "cpu")
    assert client.get_registered_model(MODEL).aliases == {"production-cpu": int(va.version)}

    again = mirror.sync(engine, everything=True)  # re-applying changes nothing
    assert again.synced == ["tiny/cpu/production"] and not again.pending
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == 2 and _alias_variant(client) == a


@contextmanager
def _mlflow_server(folder: Path, port: int):
    mlflow = Path(sys.executable).with_name("mlflow")
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_SERVER_JOB_ENABLE_PERIODIC_TASKS="false")
    proc = subprocess.Popen([str(mlflow), "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
                             "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "the MLflow server did not start"
                time.sleep(0.3)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)


@pytest.mark.slow
def test_a_tracking_server_gets_the_checkpoint_as_a_run_artifact(settings, tmp_path, measured_variant):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    engine = open_registry(f"sqlite:///{tmp_path / 'registry.db'}")
    a = measured_variant(engine, "a", GOOD)
    port = free_port()
    mirror = ModelRegistryMirror.from_settings(settings(f"tracking.uri=http://127.0.0.1:{port}"))
    down = promote(engine, a, actor="alice", gates=POLICY, mirror=mirror)  # no server yet
    assert down.mirror.startswith(f"pending: MLflow at http://127.0.0.1:{port} does not answer")

    (tmp_path / "server").mkdir()
    with _mlflow_server(tmp_path / "server", port) as uri:
        assert mirror.sync(engine).synced == ["tiny/cpu/production"]
        client = MlflowClient(uri)
        version = client.get_model_version_by_alias(MODEL, "production-cpu")
        assert version.tags["qrecipe.variant_id"] == a and version.source == f"runs:/{version.run_id}/model"
        held = {f.path for f in client.list_artifacts(version.run_id, "model")}
        assert held == {"model/qrecipe_quant.json"}  # the checkpoint folder, uploaded
        assert client.get_run(version.run_id).data.tags["qrecipe.checkpoint_of"] == a
        with pytest.raises(MlflowException, match="Invalid model version source"):  # why: a server refuses paths
            client.create_model_version(MODEL, str(tmp_path / "run-a-cpu-1" / "model"))
        assert mirror.sync(engine, everything=True).synced == ["tiny/cpu/production"]
        assert len(client.search_model_versions(f"name = '{MODEL}'")) == 1
