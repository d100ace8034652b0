"""`qrecipe search` end to end on TinyStories-656K: the found recipe is written, run and recorded
as a variant; its sensitivities land in the registry, so a second search with another budget
measures none; the search and its Pareto front are recorded (registry row, MLflow plot and table)
and shown by `qrecipe variants compare`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_calls import cli
from conftest import TINY_RUN

pytestmark = pytest.mark.slow

FAST = TINY_RUN + ["data@calib.data=tinystories", "eval.tasks.families=[]", "eval.speed.enabled=false",
                   "search.samples=8", "search.seq_len=128", "search.front_points=1"]


def _search(capsys, *overrides) -> dict:
    rc, out, err = cli(capsys, "search", "--json", "--no-progress", *FAST, *overrides)
    assert rc == 0, err
    return json.loads(out.strip().splitlines()[-1]), err


def test_search_records_its_front_and_caches_sensitivities(capsys, tmp_path):
    from mlflow.tracking import MlflowClient
    from sqlalchemy import create_engine, text

    first, log = _search(capsys, "search.budget.bits_per_weight=5")
    home = tmp_path / "qrecipe_home"
    recipe = Path(first["recipe_path"])
    assert recipe.parent == home / "recipes" and recipe.name == "search-tinystories-656k-bpw5.yaml"
    text_ = recipe.read_text()
    assert "# budget:      bits_per_weight <= 5" in text_ and "# predicted:" in text_
    n = first["sensitivities"]["measured"]
    assert n == 32 and first["sensitivities"]["cached"] == 0  # 8 units x 4 candidates (keep costs nothing)
    assert first["predicted"]["bits_per_weight"] <= 5 and first["measured"]["kl_mean"] > 0
    assert first["variant_id"] and first["measured"]["weight_bytes"] > 0
    assert [p["chosen"] for p in first["points"]].count(True) == 1 and len(first["points"]) == 2
    assert all(p["measured"]["kl_mean"] > 0 for p in first["points"])

    second, log2 = _search(capsys, "search.budget.bits_per_weight=4.5", "search.run=false")
    assert second["sensitivities"] == {"measured": 0, "cached": n}
    assert "sensitivities: 32 of 32 cached" in log2
    # the first search loaded the model for its sensitivities and its run; the second (not run:
    # search.run=false) measures its plans on the eval text only
    assert log.count("loading tinystories-656k") == 2 and log2.count("loading tinystories-656k") == 0
    assert second["variant_id"] is None and all(p["measured"]["kl_mean"] > 0 for p in second["points"])
    assert second["predicted"]["bits_per_weight"] <= 4.5 < first["predicted"]["bits_per_weight"]

    engine = create_engine(f"sqlite:///{home / 'registry.db'}")
    with engine.connect() as conn:
        # the Fisher proxy and the output error it weights, per (unit, candidate)
        assert conn.execute(text("SELECT count(*) FROM sensitivities")).scalar() == 2 * 32
        rows = list(conn.execute(text("SELECT recipe_name, variant_id, mlflow_run_id FROM searches ORDER BY id")))
    engine.dispose()
    assert [r[0] for r in rows] == ["search-tinystories-656k-bpw5", "search-tinystories-656k-bpw4.5"]
    assert rows[0][1] == first["variant_id"] and rows[0][2] == first["mlflow_run_id"]

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    run = client.get_run(first["mlflow_run_id"])
    assert run.data.tags["qrecipe.kind"] == "search" and run.data.tags["qrecipe.variant_id"] == first["variant_id"]
    assert run.data.metrics["measured.kl_mean"] == pytest.approx(first["measured"]["kl_mean"])
    names = {f.path for d in ("plots", "search") for f in client.list_artifacts(run.info.run_id, d)}
    assert {"plots/pareto.png", "search/recipe.yaml", "search/pareto_table.json", "search/points.json"} <= names
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "search/pareto_table.json", str(tmp_path)))
                       .read_text())
    assert sorted(table["columns"])[:3] and "measured_kl" in table["columns"]

    rc, out, err = cli(capsys, "variants", "compare", "--model", "tinystories-656k")
    assert rc == 0, err
    assert "search #2 of tinystories-656k" in out and "search #1 of tinystories-656k" in out
    assert "chosen *" in out and "KL+ppl" in out

    # the found recipe is a normal recipe: `qrecipe plan recipe=PATH` resolves it
    rc, out, err = cli(capsys, "plan", "--json", *TINY_RUN, f"recipe={recipe}")
    assert rc == 0, err
    assert json.loads(out)["recipe"] == "search-tinystories-656k-bpw5"


def test_a_bad_budget_is_one_line_before_any_work(capsys, tmp_path):
    rc, out, err = cli(capsys, "search", *FAST)
    assert rc == 2 and err.strip().count("\n") == 0
    assert err.startswith("error: search.budget: set exactly one of bits_per_weight")
    assert not (tmp_path / "qrecipe_home" / "recipes").exists()
