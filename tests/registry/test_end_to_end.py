"""`qrecipe run` on TinyStories-656K, end to end: the MLflow run (read back through the MLflow
client), the registry rows (read back through SQL) on SQLite and PostgreSQL, re-runs, failures,
and the commands that read the registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_calls import cli
from conftest import TINY_RUN
from sqlalchemy import create_engine, text

REQUIRED_METRICS = ("ppl", "ppl_baseline", "kl_mean", "top1_agreement", "prefill_speedup", "decode_speedup",
                    "weight_bytes", "weight_bytes_baseline", "peak_memory_bytes")
RUN_ARTIFACTS = {"config.yaml", "recipe.yaml", "plan.json", "plan.txt", "metrics.json", "layer_errors.json",
                 "plots/quality_vs_memory.png", "plots/layer_error.png"}

pytestmark = pytest.mark.slow


def _run_json(capsys, *overrides) -> dict:
    rc, out, err = cli(capsys, "run", "--json", "--no-progress", *TINY_RUN, *overrides)
    assert rc == 0, err
    return json.loads(out.strip().splitlines()[-1])


def _artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for f in client.list_artifacts(run_id, path):
        found |= _artifacts(client, run_id, f.path) if f.is_dir else {f.path}
    return found


def _sql(url: str, query: str, **params) -> list:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(query), params).mappings())
    finally:
        engine.dispose()


def test_a_run_is_tracked_in_mlflow_and_registered(registry_url, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("QRECIPE_REGISTRY_URL", registry_url)
    # peak memory (a child process per model) is measured once; it does not depend on the database
    on_sqlite = registry_url.startswith("sqlite")
    summary = _run_json(capsys, "eval.memory.method=" + ("auto" if on_sqlite else "off"))
    m = summary["metrics"]
    assert all(isinstance(m[k], (int, float)) for k in REQUIRED_METRICS if k != "peak_memory_bytes" or on_sqlite)
    assert m["kl_mean"] >= 0 and 0 < m["top1_agreement"] <= 1 and m["weight_bytes"] < m["weight_bytes_baseline"]
    if on_sqlite:  # weights + one eval batch's logits (4 x 256 x 2048 fp32) at least; not the libraries' ~500 MB
        assert m["peak_memory_method"] == "child"
        assert 4 * 256 * 2048 * 4 + m["weight_bytes_baseline"] < m["peak_memory_bytes_baseline"] < 2**29
    assert {"task.prose.greedy_match", "task.code.loglik_delta", "task.json.valid_rate"} <= set(m)
    out = Path(summary["output_dir"])
    assert out.is_dir() and not list(out.parent.glob(".*partial"))

    client = MlflowClient(summary["tracking_uri"])
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "qrecipe-tinystories-656k"
    p = run.data.params
    assert p["recipe.base.scheme"] == "W8A16" and p["recipe.rules.linears.match"] == "class:Linear"
    assert p["plan_hash"] == summary["plan_hash"] and p["model"] == "tinystories-656k" and p["target"] == "cpu"
    assert p["variant_id"] == summary["variant_id"] and p["version.torch"] and p["git_commit"]
    assert all(run.data.metrics[k] == pytest.approx(m[k]) for k in REQUIRED_METRICS if k in m)
    assert run.data.tags["qrecipe.variant_id"] == summary["variant_id"]
    assert run.data.tags["qrecipe.scheme_mix"] == "W8A16:14" and run.data.tags["qrecipe.scheme.W8A16"] == "14"
    assert RUN_ARTIFACTS <= _artifacts(client, run.info.run_id)

    [variant] = _sql(registry_url, "SELECT * FROM variants")
    assert (variant["id"], variant["status"], variant["target"]) == (summary["variant_id"], "measured", "cpu")
    assert variant["mlflow_run_id"] == run.info.run_id and variant["output_dir"] == str(out)
    [vrun] = _sql(registry_url, "SELECT * FROM variant_runs WHERE variant_id = :v", v=variant["id"])
    assert (vrun["status"], vrun["run_number"], vrun["mlflow_run_id"]) == ("succeeded", 1, run.info.run_id)
    [baseline] = _sql(registry_url, "SELECT * FROM baselines")
    assert vrun["baseline_id"] == baseline["id"] and Path(baseline["cache_path"], "reference.pt").is_file()
    assert [r["name"] for r in _sql(registry_url, "SELECT name FROM base_models")] == ["tinystories-656k"]


def test_a_rerun_the_commands_that_read_the_registry_and_the_report(monkeypatch, capsys, tmp_path):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("QRECIPE_REGISTRY_URL", f"sqlite:///{tmp_path / 'reg.db'}")
    first = _run_json(capsys)
    again = _run_json(capsys)
    other = _run_json(capsys, "recipe=w4a16", "recipe.base.group_size=32")
    assert again["variant_id"] == first["variant_id"] != other["variant_id"]
    assert (first["run_number"], again["run_number"]) == (1, 2)
    assert again["metrics"]["baseline_cached"] is True and first["metrics"]["baseline_cached"] is False
    assert again["mlflow_run_id"] != first["mlflow_run_id"]
    client = MlflowClient(first["tracking_uri"])
    tagged = client.search_runs([client.get_run(first["mlflow_run_id"]).info.experiment_id],
                                f"tags.`qrecipe.variant_id` = '{first['variant_id']}'")
    assert {r.info.run_id for r in tagged} == {first["mlflow_run_id"], again["mlflow_run_id"]}
    assert _artifacts(client, other["mlflow_run_id"]) >= {"plots/quality_vs_memory.png"}
    names = [client.get_run(r[k]).info.run_name for r in (first, again, other) for k in ["mlflow_run_id"]]
    assert names == [f"w8a16@cpu #1 {first['variant_id'][:8]}", f"w8a16@cpu #2 {first['variant_id'][:8]}",
                     f"w4a16[base.group_size=32]@cpu #1 {other['variant_id'][:8]}"]
    # speed with its spread, how far to trust it, and the eval protocol, on the MLflow run too
    m, tags = other["metrics"], client.get_run(other["mlflow_run_id"]).data.tags
    assert m["speed_timing"] == "interleaved" and m["speed_repeats"] == 5
    assert m["decode_speedup_low"] <= m["decode_speedup"] <= m["decode_speedup_high"]
    assert tags["qrecipe.decode_noisy"] == str(m["decode_noisy"]).lower()
    assert tags["qrecipe.eval_protocol"] == m["eval_protocol"] == first["metrics"]["eval_protocol"]
    assert m["backend.torch"] == 14 and m["speed_production"] is False  # fp32 W4A16: dequantize, then matmul
    assert "not the production kernel's speed" in tags["qrecipe.speed_caveat"]
    assert "predicted_decode_speedup" not in m  # target cpu states no bandwidth: no prediction

    rc, out, _ = cli(capsys, "variants", "list")
    assert rc == 0 and first["variant_id"] in out and other["variant_id"] in out
    rc, out, _ = cli(capsys, "variants", "show", first["variant_id"][:6], "--json")
    shown = json.loads(out)
    assert [r["number"] for r in shown["runs"]] == [1, 2] and shown["metrics"]["ppl"] == again["metrics"]["ppl"]
    # compare and report use the runs measured under the protocol of the settings they are given
    rc, out, _ = cli(capsys, "variants", "compare", "--json", *TINY_RUN)
    shown = json.loads(out)
    rows = {r["variant"]: r for r in shown["rows"]}
    assert shown["protocol"] == first["metrics"]["eval_protocol"] and shown["missing"] == {}
    assert rows[other["variant_id"]]["weight_reduction"] == pytest.approx(other["metrics"]["weight_reduction"])
    assert rows[other["variant_id"]]["serves_on"] == ["a100", "cpu", "h100", "h200", "l4"]  # weight-only: anywhere
    assert rows[other["variant_id"]]["worst_family"] == other["metrics"]["task.worst_family"]
    assert rows[first["variant_id"]]["run_number"] == 2
    rc, out, _ = cli(capsys, "variants", "compare", first["variant_id"], other["variant_id"], *TINY_RUN)
    assert rc == 0 and "worst task" in out and "w4a16" in out
    assert out.startswith(f"eval protocol {first['metrics']['eval_protocol']}: tinystories (sha256 ")
    assert f"note: {other['variant_id']}: not the production kernel's speed" in out
    rc, _, err = cli(capsys, "variants", "compare", first["variant_id"], *TINY_RUN, "eval.windows=4")
    assert rc == 2 and "no successful run under eval protocol" in err  # measured on 8 windows, not 4

    rc, out, _ = cli(capsys, "report", "tinystories-656k", "--out", str(tmp_path / "report"), *TINY_RUN)
    assert rc == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Decision matrix" in md and other["variant_id"] in md
    assert f"{other['metrics']['ppl_delta_pct']:+.2f}%" in md
    assert (tmp_path / "report" / "quality_vs_memory.png").stat().st_size > 0
    report_run = out.split("MLflow: run ")[1].split()[0]
    assert _artifacts(client, report_run) >= {"report/report.md", "report/quality_vs_memory.png",
                                              "report/task_families.png"}


def test_a_failed_run_leaves_no_success_behind(monkeypatch):
    from mlflow.tracking import MlflowClient

    from qrecipe.engine.config import compose, load_settings
    from qrecipe.engine.evaluate import suite
    from qrecipe.engine.run import run
    from qrecipe.registry import recorder
    from qrecipe.registry.recorder import RunRecorder
    from qrecipe.registry.tracking import tracking_uri

    def broken(*args, **kwargs):
        raise RuntimeError("speed measurement exploded")

    monkeypatch.setattr(suite, "measure_variant_speed", broken)
    cfg = compose(TINY_RUN)
    with pytest.raises(RuntimeError, match="exploded"):
        run(cfg, recorder=RunRecorder(), progress=False)
    settings = load_settings(cfg)
    url = recorder.registry_url(settings)
    [vrun] = _sql(url, "SELECT * FROM variant_runs")
    assert vrun["status"] == "failed" and "exploded" in vrun["error"]
    assert _sql(url, "SELECT status FROM variants")[0]["status"] == "failed"
    client = MlflowClient(tracking_uri(settings))
    assert client.get_run(vrun["mlflow_run_id"]).info.status == "FAILED"
    runs = Path(settings.paths.root) / "runs"
    assert not runs.exists() or list(runs.iterdir()) == []  # no folder, no staged leftovers
