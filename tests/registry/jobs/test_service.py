"""The job API over real HTTP: `qrecipe serve` on loopback with two worker processes and a
SQLite registry, tokens with read and write scopes. Sleep jobs stand in for recipe runs here
(test_real_run.py runs a real one)."""

from __future__ import annotations

import json
import os
import re
import signal
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from jobs_service import FAST, READ_TOKEN, WRITE_TOKEN, Service, wait_for

from qrecipe.registry.cli import main

FINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    home = tmp_path_factory.mktemp("service") / "home"
    # the promotion test's variants are recorded without an eval protocol: the gates judge them anyway
    svc = Service(home, FAST + ["gates.any_protocol=true"], workers=2, tokens=f"write:{WRITE_TOKEN},read:{READ_TOKEN}")
    yield svc
    assert svc.stop() == 0, svc.output()
    assert "Traceback" not in svc.output(), svc.output()


@pytest.fixture(scope="module")
def api(service):
    with service.client() as client:
        yield client


def _sleep(api, seconds: float = 0.0, **extra) -> dict:
    r = api.post("/jobs", json={"kind": "sleep", "sleep": {"seconds": seconds}, **extra})
    assert r.status_code == 201, r.text
    return r.json()


def _wait(api, job_id: int, statuses=FINAL) -> dict:
    return wait_for(f"job {job_id} to reach {statuses}",
                    lambda: (j := api.get(f"/jobs/{job_id}").json())["status"] in statuses and j)


def _error(response, status: int) -> str:
    """The one-line JSON error of a refused request."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    message = response.json()["error"]
    assert isinstance(message, str) and "\n" not in message and "Traceback" not in message
    return message


def test_health_and_the_api_description_need_no_token(service):
    assert httpx.get(f"{service.url}/healthz").json()["status"] == "ok"
    assert httpx.get(f"{service.url}/docs").status_code == 404  # off by default: its page needs a CDN
    paths = httpx.get(f"{service.url}/openapi.json").json()["paths"]
    assert {"/jobs", "/jobs/{job_id}", "/jobs/{job_id}/logs", "/jobs/{job_id}/cancel", "/variants",
            "/variants/{variant_id}", "/variants/{variant_id}/promote", "/healthz"} <= set(paths)


def test_tokens_and_scopes(service, api):
    job = _sleep(api)
    anonymous, wrong, reader = service.client(None), service.client("not-a-token-at-all"), service.client(READ_TOKEN)
    assert "missing bearer token" in _error(anonymous.get("/jobs"), 401)
    assert anonymous.get("/jobs").headers["www-authenticate"] == "Bearer"
    assert "invalid token" in _error(wrong.get(f"/jobs/{job['id']}"), 401)
    assert "invalid token" in _error(wrong.post("/jobs", json={"kind": "sleep"}), 401)
    assert reader.get(f"/jobs/{job['id']}").status_code == 200 and reader.get("/variants").status_code == 200
    assert "needs a token with write scope" in _error(reader.post("/jobs", json={"kind": "sleep"}), 403)
    assert "write scope" in _error(reader.post(f"/jobs/{job['id']}/cancel"), 403)
    assert "write scope" in _error(reader.post("/variants/abc/promote", json={}), 403)
    assert "Authorization" in _error(service.client(None).get("/jobs", headers={"Authorization": "Basic x"}), 401)


def test_bad_requests_get_the_right_4xx_as_one_line_of_json(service, api):
    assert "not valid JSON" in _error(api.post("/jobs", content=b"{nope", headers={"content-type":
                                                                                    "application/json"}), 422)
    assert "bogus: Extra inputs" in _error(api.post("/jobs", json={"kind": "run", "bogus": 1}), 422)
    assert _error(api.post("/jobs", json={"priority": "high"}), 422).startswith("priority:")
    assert _error(api.post("/jobs", json={"kind": "exec"}), 422).startswith("kind:")
    assert "larger than 65536 bytes" in _error(api.post("/jobs", json={"overrides": ["eval.windows=1"] * 5000}), 413)
    assert "at most 64" in _error(api.post("/jobs", json={"overrides": ["eval.windows=1"] * 65}), 422)
    assert "no recipe named 'nope'" in _error(api.post("/jobs", json={"recipe": "nope"}), 422)
    assert "hydra.* settings" in _error(api.post("/jobs", json={"overrides": ["hydra.run.dir=/"]}), 422)
    assert "_target_" in _error(api.post("/jobs", json={"overrides": ["+recipe.x={_target_: os.system}"]}), 422)
    assert "tracking.* is set by the operator" in _error(api.post("/jobs", json={"overrides": ["tracking.uri=x"]}),
                                                         422)
    assert "lies outside" in _error(api.post("/jobs", json={"kind": "plan", "overrides": ["model=hf",
                                                                                          "model.path=/etc"]}), 422)
    assert "idempotency-key" in _error(api.post("/jobs", json={"kind": "sleep"},
                                                headers={"Idempotency-Key": "no spaces allowed"}), 422).lower()
    assert "no such job" in _error(api.get("/jobs/999999"), 404)
    assert _error(api.get("/jobs/abc"), 422).startswith("job_id:")
    assert _error(api.get("/nowhere"), 404)
    assert "no such variant" in _error(api.get("/variants/0123abcd"), 404)
    assert _error(api.get("/variants/..%2f..%2fetc"), 404)


ODD = [  # (method, path, JSON body, status, start of the error)
    ("GET", "/jobs/", None, 404, "Not Found"),  # no redirect to /jobs (307)
    ("DELETE", "/jobs", None, 405, "Method Not Allowed"),
    ("GET", "/jobs/1/cancel", None, 405, "Method Not Allowed"),
    ("POST", "/jobs", {"overrides": ["recipe." + ".".join(["a"] * 400) + "=1"]}, 422, "recipe.a.a.a"),
    ("POST", "/jobs", {"overrides": ["recipe." + "a" * 900 + "=1"]}, 422, "recipe.aaaa"),
    ("POST", "/jobs", {"overrides": ["recipe.x=" + "[" * 400 + "]" * 400]}, 422, "cannot parse override: a value "
                                                                                 "nests"),
    ("POST", "/jobs", {"kind": "plan", "overrides": ["model=tinystories-656k", "~recipe.rules"]}, 422,
     "recipe.rules: none"),
    ("POST", "/jobs", {"kind": "plan", "overrides": ["model=tinystories-656k", "recipe.name=../../../../tmp/x"]}, 422,
     "recipe.name: '../../../../tmp/x' is not a recipe name"),
    ("POST", "/jobs", {"kind": "plan", "overrides": ["model=tinystories-656k", "recipe.name=${oc.env:HOME}"]}, 422,
     "recipe.name: interpolations"),
    ("POST", "/jobs", {"kind": "plan", "overrides": ["model=tinystories-656k", "recipe.base.activation=static"]}, 422,
     "recipe.base.activation: ignored by every rule"),
    ("POST", "/jobs", {"kind": "plan", "debug": {"pause_at": "baseline"}}, 422, "debug.pause_at: only a run job"),
    ("POST", "/jobs", {"debug": {"pause_at": "lunch"}}, 422, "debug.pause_at: Input should be"),
    ("GET", "/jobs/1/logs?after=99999999999999999999999", None, 422, "after:"),
    ("GET", "/jobs?before=99999999999999999999", None, 422, "before:"),
]


@pytest.mark.parametrize("method, path, body, status, message", ODD, ids=[f"{m} {p[:40]}" for m, p, *_ in ODD])
def test_odd_requests_get_a_documented_4xx(service, method, path, body, status, message):
    """The statuses the README lists (401 403 404 405 409 413 422; 503 when the database is
    down), never a 500 or a redirect, and each as one line of JSON."""
    with service.client() as api:  # a fresh connection each: an error must not cost the next request
        response = api.request(method, path, json=body)
    assert _error(response, status).startswith(message)


def test_the_same_idempotency_key_returns_the_first_job(api):
    key = {"Idempotency-Key": "retry-me-1"}
    first = api.post("/jobs", json={"kind": "sleep", "priority": 3}, headers=key)
    again = api.post("/jobs", json={"kind": "sleep", "priority": 3}, headers=key)
    assert (first.status_code, again.status_code) == (201, 200) and first.json()["id"] == again.json()["id"]
    assert "already used for a different request" in _error(api.post("/jobs", json={"kind": "sleep", "priority": 4},
                                                                     headers=key), 409)


def test_100_concurrent_submissions_all_run_exactly_once(api):
    def submit(i: int) -> httpx.Response:
        return api.post("/jobs", json={"kind": "sleep", "sleep": {"seconds": 0}},
                        headers={"Idempotency-Key": f"burst-{i}"})

    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(submit, range(100)))
    assert [r.status_code for r in responses] == [201] * 100
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 100
    jobs = [_wait(api, i) for i in sorted(ids)]
    assert {j["status"] for j in jobs} == {"succeeded"}
    assert {j["attempts"] for j in jobs} == {1} and {len(j["attempt_history"]) for j in jobs} == {1}
    for job_id in sorted(ids)[:10]:  # each ran in one process, once
        assert api.get(f"/jobs/{job_id}/logs").text.count("sleep job: pid") == 1


def _pid(api, job_id: int) -> int:
    log = wait_for(f"job {job_id} to start", lambda: (t := api.get(f"/jobs/{job_id}/logs").text) and "pid" in t and t)
    return int(re.search(r"pid (\d+)", log).group(1))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_cancel_a_queued_and_a_running_job(api):
    busy = [_sleep(api, 60, priority=900) for _ in range(2)]  # both workers
    queued = _sleep(api, 0, priority=-5)
    running = [_wait(api, j["id"], ("running",)) for j in busy]
    r = api.post(f"/jobs/{queued['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    pids = [_pid(api, j["id"]) for j in running]
    for j in running:
        assert api.post(f"/jobs/{j['id']}/cancel").json()["cancel_requested"]
    for j in running:
        done = _wait(api, j["id"])
        assert done["status"] == "cancelled" and done["error"] == "cancelled while running"
    wait_for("the cancelled jobs' processes to end", lambda: not any(_alive(p) for p in pids))
    assert "terminated" in api.get(f"/jobs/{running[0]['id']}/logs").text
    assert "already cancelled" not in api.post(f"/jobs/{queued['id']}/cancel").text  # again: harmless
    finished = _wait(api, _sleep(api)["id"])
    assert "already succeeded" in _error(api.post(f"/jobs/{finished['id']}/cancel"), 409)


def test_logs_stream_until_the_job_ends(api):
    job = _sleep(api, 1.5, priority=50)
    with api.stream("GET", f"/jobs/{job['id']}/logs", params={"follow": True}) as response:
        text = "".join(response.iter_text())
    assert "sleeping 1.5s" in text and text.rstrip().endswith("sleep job: done")
    assert api.get(f"/jobs/{job['id']}").json()["status"] == "succeeded"


def test_status_filter_and_job_details(api):
    job = _wait(api, _sleep(api, 0, priority=10)["id"])
    assert job["progress"] == 1.0 and job["stage"] == "succeeded" and job["result"]["slept_seconds"] == 0
    assert job["timings"]["started_at"] and job["timings"]["running_seconds"] >= 0
    succeeded = api.get("/jobs", params={"status": "succeeded", "limit": 1000}).json()["jobs"]
    assert job["id"] in {j["id"] for j in succeeded} and {j["status"] for j in succeeded} == {"succeeded"}
    assert _error(api.get("/jobs", params={"status": "lost"}), 422).startswith("status:")


def test_variants_and_promotion(service, api, measured_variant):
    """POST /variants/{id}/promote is `qrecipe variants promote`: gates, force with a reason,
    scopes, and the audit trail the CLI reads."""
    from qrecipe.registry.db import default_url, open_registry
    from qrecipe.registry.promotion_history import history

    engine = open_registry(default_url(service.home))
    good = measured_variant(engine, "good", {"ppl_delta_pct": 0.5, "kl_mean": 0.01, "top1_agreement": 0.97})
    bad = measured_variant(engine, "bad", {"ppl_delta_pct": 9.0, "kl_mean": 0.2, "top1_agreement": 0.7})
    assert {v["id"] for v in api.get("/variants").json()["variants"]} >= {good, bad}
    assert "no such variant" in _error(api.post("/variants/0123abcd/promote", json={}), 404)

    promoted = api.post(f"/variants/{good}/promote", json={})
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["variant_id"] == good and promoted.json()["changed"] is True

    refused = _error(api.post(f"/variants/{bad}/promote", json={}), 409)
    assert "ppl_delta_pct" in refused and "9" in refused  # the failed gate, with its numbers
    assert "reason" in _error(api.post(f"/variants/{bad}/promote", json={"force": True}), 422)
    with service.client(READ_TOKEN) as reader:
        assert reader.post(f"/variants/{bad}/promote", json={}).status_code == 403

    forced = api.post(f"/variants/{bad}/promote", json={"force": True, "reason": "hotfix, quality signed off"})
    assert forced.status_code == 200 and forced.json()["forced"] is True
    trail = history(engine, "tiny")
    assert [(p.variant_id, p.forced) for p in trail][-2:] == [(good, False), (bad, True)]


def _cli(capsys, service, *args) -> tuple[int, str, str]:
    rc = main(["jobs", *args, "--server", service.url, "--token", WRITE_TOKEN])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_the_jobs_commands(service, api, capsys):
    rc, out, _ = _cli(capsys, service, "submit", "--kind", "sleep", "--seconds", "0.2", "--wait", "--json")
    job = json.loads(out)
    assert rc == 0 and job["status"] == "succeeded"
    rc, out, _ = _cli(capsys, service, "list", "--status", "succeeded")
    assert rc == 0 and re.search(rf"^{job['id']}\s+succeeded\s+sleep", out, re.M)
    rc, out, _ = _cli(capsys, service, "show", str(job["id"]))
    assert rc == 0 and f"job {job['id']}: succeeded" in out and "#1 succeeded" in out
    rc, out, _ = _cli(capsys, service, "logs", str(job["id"]))
    assert rc == 0 and "sleep job: done" in out
    rc, _, err = _cli(capsys, service, "cancel", str(job["id"]))
    assert rc == 2 and err.strip() == f"error: job {job['id']}: already succeeded; only queued or running jobs can " \
                                      f"be cancelled (HTTP 409)"
    rc, out, _ = _cli(capsys, service, "submit", "--kind", "plan", "-m", "--json", "recipe=w8a16,w4a16",
                      "model=tinystories-656k", "target=cpu")
    sweep = json.loads(out)["jobs"]  # one job per point, each planned at submit time
    assert rc == 0 and [j["recipe"] for j in sweep] == ["w8a16", "w4a16"] and sweep[0]["plan_hash"] != \
        sweep[1]["plan_hash"]
    for j in sweep:  # not needed further: cancelled, queued or running
        rc, out, _ = _cli(capsys, service, "cancel", str(j["id"]))
        assert rc == 0 and re.match(rf"job {j['id']}: (cancelled|running \(cancelling)", out)
    rc, _, err = _cli(capsys, service, "submit", "recipe=nope")
    assert rc == 2 and "no recipe named 'nope'" in err and err.count("\n") == 1
    rc = main(["jobs", "list", "--server", "http://127.0.0.1:9"])
    assert rc == 2 and "cannot reach the qrecipe service at http://127.0.0.1:9" in capsys.readouterr().err


def test_a_job_that_fails_is_not_retried_but_one_whose_process_was_killed_is(api):
    submitted = api.post("/jobs", json={"kind": "sleep", "priority": 20, "sleep": {"seconds": 0, "fail": True}})
    failed = _wait(api, submitted.json()["id"])
    assert (failed["status"], failed["attempts"]) == ("failed", 1)
    assert failed["error"] == "sleep job: asked to fail (sleep.fail=true)"
    job = _sleep(api, 2, priority=30)
    os.kill(_pid(api, job["id"]), signal.SIGKILL)  # as the kernel's OOM killer would
    done = _wait(api, job["id"])
    assert (done["status"], done["attempts"]) == ("succeeded", 2)
    first = done["attempt_history"][0]
    assert first["outcome"] == "failed" and "without a result" in first["error"] and "SIGKILL" in first["error"]


def test_cancel_takes_several_jobs_and_list_says_when_it_truncates(service, api, capsys):
    done = _wait(api, _sleep(api, 0, priority=999)["id"])
    busy = [_sleep(api, 60, priority=998) for _ in range(2)]  # both workers
    for j in busy:
        _wait(api, j["id"], ("running",))
    queued = [_sleep(api, 0, priority=-100) for _ in range(2)]
    rc, out, err = _cli(capsys, service, "cancel", str(queued[0]["id"]), str(done["id"]), str(queued[1]["id"]))
    assert rc == 2 and err.splitlines() == [
        f"error: job {done['id']}: already succeeded; only queued or running jobs can be cancelled (HTTP 409)",
        "error: 1 of 3 jobs were not cancelled"]
    assert out.splitlines() == [f"job {j['id']}: cancelled; sleep" for j in queued]
    rc, out, _ = _cli(capsys, service, "cancel", *(str(j["id"]) for j in busy))
    assert rc == 0 and len(out.splitlines()) == 2
    page = api.get("/jobs", params={"limit": 2}).json()
    assert len(page["jobs"]) == 2 and page["more"] is True
    assert api.get("/jobs", params={"limit": 1000}).json()["more"] is False
    rc, out, err = _cli(capsys, service, "list", "--limit", "2")
    last = page["jobs"][-1]["id"]
    assert rc == 0 and out.count("\n") == 4  # header, rule, two jobs
    assert err.strip() == f"note: 2 jobs shown and older ones exist; see them with --before {last} (or a larger " \
                          f"--limit, up to 1000)"
    rc, out, err = _cli(capsys, service, "list", "--limit", "1000")
    assert rc == 0 and err == ""


def test_swagger_ui_only_when_the_operator_turns_it_on(tmp_path):
    """Its page loads swagger-ui from a CDN (so it is off by default); /openapi.json is always there."""
    from fastapi.testclient import TestClient

    from qrecipe.registry.db import default_url, open_registry
    from qrecipe.registry.jobs.config import JobsConfig, ServiceConfig
    from qrecipe.registry.jobs.service.app import ServiceState, create_app
    from qrecipe.registry.jobs.submit import Submitter

    engine = open_registry(default_url(tmp_path))
    for docs, status in ((False, 404), (True, 200)):
        state = ServiceState(engine=engine, jobs=JobsConfig(), service=ServiceConfig(docs=docs),
                             submitter=Submitter(JobsConfig(), {}), tokens={}, sections={})
        with TestClient(create_app(state)) as client:
            assert client.get("/docs").status_code == status
            assert client.get("/openapi.json").status_code == 200
            assert client.get("/redoc").status_code == 404
