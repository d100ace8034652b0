"""One real recipe run through the job API, end to end: TinyStories-656K submitted over HTTP,
planned at submit time, run by a worker process, recorded in the registry as the variant the
plan predicted; the same recipe submitted again is a second run of that variant, not a second
variant."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY_RUN
from jobs_service import FAST, Service, wait_for

pytestmark = pytest.mark.slow


def test_a_recipe_run_submitted_over_http(shared, tmp_path):
    home = tmp_path / "home"
    service = Service(home, FAST, workers=1)
    try:
        with service.client(None) as api:
            body = {"recipe": "w8a16", "overrides": TINY_RUN}
            submitted = api.post("/jobs", json=body)
            assert submitted.status_code == 201, submitted.text
            job = submitted.json()
            assert job["status"] == "queued" and job["plan_hash"] and job["expected_variant_id"]

            def ended():
                j = api.get(f"/jobs/{job['id']}").json()
                return j["status"] in ("succeeded", "failed", "cancelled") and j

            done = wait_for("the run to end", ended, timeout=600, every=0.5)
            assert done["status"] == "succeeded", (done["error"], api.get(f"/jobs/{job['id']}/logs").text)
            assert done["variant_id"] == job["expected_variant_id"] and done["run_number"] == 1
            assert done["progress"] == 1.0
            out = Path(done["result"]["output_dir"])
            assert out.is_dir() and out.is_relative_to(home) and done["result"]["metrics"]["ppl"] > 0
            # The stages, read from the log rather than sampled by polling (a short stage can fall
            # between two polls).
            logs = api.get(f"/jobs/{job['id']}/logs").text
            assert "loading tinystories-656k" in logs and "baseline perplexity" in logs
            assert "quantized 14 layers" in logs
            variant = api.get(f"/variants/{done['variant_id'][:6]}").json()
            assert variant["status"] == "measured" and [r["status"] for r in variant["runs"]] == ["succeeded"]

            again = api.post("/jobs", json=body).json()
            rerun = wait_for("the re-run to end", lambda: (j := api.get(f"/jobs/{again['id']}").json())["status"]
                             in ("succeeded", "failed") and j, timeout=600, every=0.5)
            assert rerun["status"] == "succeeded" and rerun["id"] != job["id"]
            assert (rerun["variant_id"], rerun["run_number"]) == (done["variant_id"], 2)
            variants = api.get("/variants").json()["variants"]
            assert [(v["id"], v["runs_count"]) for v in variants] == [(done["variant_id"], 2)]
    finally:
        assert service.stop() == 0, service.output()
