"""A search as a job over the real HTTP service: submitted (its budget checked at once, 422 for a
bad one), watched (stages and progress, the variant its found recipe became), and cancelled while
it measures sensitivities. And cancelled at its stage boundaries with the attempt's own code in
this process, as run jobs are (test_cancel.py): it stops there and records no search."""

from __future__ import annotations

from pathlib import Path

import os

import pytest
from conftest import TINY_RUN
from jobs_service import FAST, Service, cancel_at_stage, wait_for

pytestmark = pytest.mark.slow

SEARCH = TINY_RUN + ["data@calib.data=tinystories", "eval.tasks.families=[]", "eval.speed.enabled=false",
                     "search.samples=8", "search.seq_len=128", "search.front_points=1"]


def test_search_jobs_over_http(shared, tmp_path):
    home = tmp_path / "home"
    service = Service(home, FAST, workers=1)
    try:
        with service.client(None) as api:
            bad = api.post("/jobs", json={"kind": "search", "overrides": SEARCH})
            assert bad.status_code == 422 and bad.json()["error"].startswith("search.budget: set exactly one of")
            refused = api.post("/jobs", json={"kind": "search", "overrides": [*SEARCH, "search.budget.max_kl=0.1",
                                                                               "search.output=/tmp/x.yaml"]})
            assert refused.status_code == 422 and refused.json()["error"].startswith("search.output: /tmp/x.yaml")

            job = api.post("/jobs", json={"kind": "search", "overrides": [*SEARCH, "search.budget.bits_per_weight=5"]})
            assert job.status_code == 201, job.text
            job = job.json()
            assert job["kind"] == "search" and job["params"] == {"budget": {"bits_per_weight": 5.0}}
            done = wait_for("the search to end", lambda: (j := api.get(f"/jobs/{job['id']}").json())["status"]
                            in ("succeeded", "failed", "cancelled") and j, timeout=600, every=0.5)
            logs = api.get(f"/jobs/{job['id']}/logs").text
            assert done["status"] == "succeeded", (done["error"], logs)
            assert done["progress"] == 1.0 and done["variant_id"] == done["result"]["variant_id"]
            recipe = Path(done["result"]["recipe_path"])
            assert recipe.is_file() and recipe.is_relative_to(home / "recipes")
            assert "sensitivities: 0 of 32 cached" in logs and "found:" in logs and "measuring 1 more" in logs
            assert done["result"]["predicted"]["bits_per_weight"] <= 5
            variant = api.get(f"/variants/{done['variant_id']}").json()
            assert variant["recipe"] == recipe.stem and variant["status"] == "measured"

            # a slow one (exact KL on a larger slice, nothing cached for it), cancelled while it measures
            slow = api.post("/jobs", json={"kind": "search", "overrides": [
                *SEARCH, "search.budget.bits_per_weight=4.5", "search.sensitivity=exact", "search.samples=64",
                "search.seq_len=256"]}).json()
            wait_for("the slow search to measure", lambda: api.get(f"/jobs/{slow['id']}").json()["stage"]
                     == "sensitivity", timeout=300, every=0.2)
            assert api.post(f"/jobs/{slow['id']}/cancel").status_code == 200
            ended = wait_for("the cancel", lambda: (j := api.get(f"/jobs/{slow['id']}").json())["status"]
                             in ("succeeded", "failed", "cancelled") and j, timeout=120, every=0.3)
            assert ended["status"] == "cancelled" and ended["variant_id"] is None
            assert not list((home / "recipes").glob("*bpw4.5*"))  # nothing half-written
    finally:
        assert service.stop() == 0, service.output()


# a stage of the search itself, one of its found recipe's run (the variant is not registered),
# and two after that run was recorded (the variant stays; the front and the search are not recorded)
CANCEL_AT = ("sensitivity", "run: quantizing", "front", "recording")


def test_a_search_job_cancelled_at_a_stage_records_no_search(shared):
    from mlflow.tracking import MlflowClient
    from sqlalchemy import text

    from qrecipe.registry.db import open_registry
    from qrecipe.registry.jobs.requests import JobRequest
    from qrecipe.registry.jobs.service.serve import Operator
    from qrecipe.registry.queries import list_variants, variant_runs

    home = Path(os.environ["QRECIPE_HOME"])
    op = Operator.load(["tracking=local"])
    engine = open_registry(op.registry_url)
    overrides = [*SEARCH, "search.budget.bits_per_weight=5", "search.front_points=1"]
    for stage in CANCEL_AT:
        seen = cancel_at_stage(engine, op, JobRequest(kind="search", overrides=overrides), stage, stage)
        assert seen.count(stage) == 1  # it went no further than that boundary

    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM searches")).scalar() == 0
    # the jobs past the sensitivities wrote their recipes (numbered names), which became variants
    # measured only where the run was recorded before the cancel: at "front" and "recording"
    recipes = sorted(p.name for p in (home / "recipes").iterdir())
    assert recipes == sorted(f"search-tinystories-656k-bpw5{n}.yaml" for n in ("", "-2", "-3"))
    by_recipe = {v.recipe_name: v for v in list_variants(engine)}
    assert sorted(by_recipe) == sorted(r.removesuffix(".yaml") for r in recipes)
    stopped = by_recipe["search-tinystories-656k-bpw5"]
    cancelled = variant_runs(engine, stopped.id)
    assert [r.status for r in cancelled] == ["failed"] and stopped.metrics is None
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    assert client.get_run(cancelled[0].mlflow_run_id).info.status == "KILLED"
    assert not (home / "runs").exists() or len(list((home / "runs").iterdir())) == 2  # its folder removed
    for name in ("search-tinystories-656k-bpw5-2", "search-tinystories-656k-bpw5-3"):
        assert by_recipe[name].status == "measured"
    searches = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                  "tags.`qrecipe.kind` = 'search'")
    assert searches == []  # the cancel at "recording" came before the search's MLflow run
