"""The queue's semantics on SQLite and PostgreSQL: each job claimed once under concurrent
claimers, priority then submission order, leases that expire and re-queue, tokens that fence a
stale attempt out, max attempts, cancel, release, idempotency keys."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select, update

from qrecipe.registry.db import open_registry, read_session, write_session
from qrecipe.registry.jobs import queue
from qrecipe.registry.jobs.models import Job, JobAttempt
from qrecipe.registry.models import Variant, VariantRun
from qrecipe.registry.record import VariantIdentity, begin_run


def _specs(n: int, priority: int = 0, max_attempts: int = 3) -> list[queue.JobSpec]:
    return [queue.JobSpec(kind="sleep", priority=priority, max_attempts=max_attempts, overrides=[],
                          params={"seconds": 0}) for _ in range(n)]


def _submit(engine, n: int = 1, **kw) -> list[int]:
    jobs, _ = queue.submit(engine, _specs(n, **kw), request_hash="h", actor="test")
    return [j.id for j in jobs]


def _expire(engine, job_id: int) -> None:
    """As if its worker stopped heartbeating long ago."""
    with write_session(engine) as s:
        s.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=0.0))


def test_concurrent_claimers_each_get_a_different_job(registry_url):
    engine = open_registry(registry_url)
    ids = _submit(engine, 40)
    claimed, lock = [], threading.Lock()

    def claimer(n: int) -> None:
        while (c := queue.claim(engine, f"w{n}", 60)) is not None:
            with lock:
                claimed.append(c.job.id)

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == ids  # every job once, none twice
    with read_session(engine) as s:
        assert {j.attempts for j in s.scalars(select(Job))} == {1}
        assert s.query(JobAttempt).count() == 40


def test_claims_follow_priority_then_submission_order(registry_url):
    engine = open_registry(registry_url)
    low = _submit(engine, 2, priority=0)
    high = _submit(engine, 2, priority=5)
    order = [queue.claim(engine, "w", 60).job.id for _ in range(4)]
    assert order == high + low and queue.claim(engine, "w", 60) is None


def test_a_lost_worker_s_job_is_requeued_and_its_stale_attempt_fenced_out(registry_url):
    engine = open_registry(registry_url)
    (job_id,) = _submit(engine, max_attempts=2)
    first = queue.claim(engine, "dead", 60)
    assert queue.requeue_expired(engine) == [] and queue.get_job(engine, job_id).status == "running"
    _expire(engine, job_id)
    queue.requeue_expired(engine)
    job = queue.get_job(engine, job_id)
    assert job.status == "queued" and "worker dead stopped renewing its lease" in job.error
    second = queue.claim(engine, "alive", 60)
    assert second.attempt == 2 and second.token != first.token
    # the first attempt comes back to life: nothing it writes lands
    assert not queue.heartbeat(engine, job_id, first.token, 60).owned
    assert not queue.record_progress(engine, job_id, first.token, stage="x", progress=0.5)
    assert not queue.finish(engine, job_id, first.token, "succeeded", result={"from": "stale"})
    assert queue.finish(engine, job_id, second.token, "succeeded", result={"from": "second"})
    job = queue.get_job(engine, job_id)
    assert (job.status, job.result, job.attempts) == ("succeeded", {"from": "second"}, 2)
    assert [(a.number, a.outcome) for a in queue.attempts(engine, job_id)] == [(1, "lost"), (2, "succeeded")]


def test_after_max_attempts_the_job_fails_with_the_reason(registry_url):
    engine = open_registry(registry_url)
    (job_id,) = _submit(engine, max_attempts=2)
    for _ in range(2):
        queue.claim(engine, "flaky", 60)
        _expire(engine, job_id)
        queue.requeue_expired(engine)
    job = queue.get_job(engine, job_id)
    assert job.status == "failed" and "gave up after 2 attempt(s) (jobs.max_attempts=2)" in job.error
    assert queue.claim(engine, "w", 60) is None


def test_a_process_that_died_is_retried_but_an_error_of_the_job_is_not(registry_url):
    engine = open_registry(registry_url)
    died, failed = _submit(engine, 2)
    c = queue.claim(engine, "w", 60)
    assert queue.retry_or_fail(engine, died, c.token, "killed by SIGKILL") == "queued"
    assert queue.claim(engine, "w", 60).attempt == 2  # the same job again
    c = queue.claim(engine, "w", 60)
    assert c.job.id == failed
    assert queue.finish(engine, failed, c.token, "failed", error="recipe.base: bad")
    assert queue.get_job(engine, failed).attempts == 1 and queue.get_job(engine, failed).status == "failed"


def test_heartbeat_renews_the_lease_and_carries_cancel_requests(registry_url):
    engine = open_registry(registry_url)
    queued, running = _submit(engine, 2)
    c = queue.claim(engine, "w", 60)
    assert c.job.id == queued  # claimed first; cancel the other while it waits
    assert queue.cancel(engine, running).status == "cancelled"
    assert queue.heartbeat(engine, queued, c.token, 60) == queue.Beat(owned=True, cancel_requested=False)
    assert queue.cancel(engine, queued).cancel_requested
    assert queue.heartbeat(engine, queued, c.token, 60).cancel_requested
    assert queue.finish(engine, queued, c.token, "cancelled", error="cancelled while running")
    assert queue.cancel(engine, running).status == "cancelled"  # again: harmless
    (done,) = _submit(engine)
    c = queue.claim(engine, "w", 60)
    queue.finish(engine, done, c.token, "succeeded", result={})
    with pytest.raises(queue.JobFinished, match="already succeeded"):
        queue.cancel(engine, done)
    with pytest.raises(queue.JobNotFound):
        queue.cancel(engine, 10_000)


def test_a_released_job_goes_back_without_spending_an_attempt(registry_url):
    engine = open_registry(registry_url)
    (job_id,) = _submit(engine, max_attempts=1)
    c = queue.claim(engine, "w", 60)
    assert queue.release(engine, job_id, c.token, "worker w shut down")
    job = queue.get_job(engine, job_id)
    assert (job.status, job.attempts) == ("queued", 0)
    assert queue.claim(engine, "w2", 60).job.attempts == 1
    assert [(a.number, a.outcome) for a in queue.attempts(engine, job_id)] == [(1, "released"), (2, None)]


def test_idempotency_keys(registry_url):
    engine = open_registry(registry_url)
    first, replayed = queue.submit(engine, _specs(2), request_hash="a", actor="t", idempotency_key="k1")
    again, replayed_again = queue.submit(engine, _specs(2), request_hash="a", actor="t", idempotency_key="k1")
    assert not replayed and replayed_again and [j.id for j in again] == [j.id for j in first]
    assert [j.id for j in queue.replay(engine, "k1", "a")] == [j.id for j in first]
    with pytest.raises(queue.IdempotencyConflict, match="already used for a different request"):
        queue.submit(engine, _specs(1), request_hash="b", actor="t", idempotency_key="k1")
    results = []

    def racer() -> None:
        jobs, _ = queue.submit(engine, _specs(1), request_hash="c", actor="t", idempotency_key="k2")
        results.append(jobs[0].id)

    threads = [threading.Thread(target=racer) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(queue.list_jobs(engine)) == 3


IDENT = VariantIdentity(model="tiny", model_source="/m", model_type="llama", target="cpu", recipe_name="w8a16",
                        recipe_hash="r", plan_hash="p", scheme_mix="W8A16:1", requires=())


def _run_status(engine, run_id: int) -> str:
    with read_session(engine) as s:
        return s.get(VariantRun, run_id).status


def test_the_registry_and_mlflow_runs_of_a_lost_attempt_are_closed(registry_url, tmp_path):
    from qrecipe.engine.config.compose import compose
    from qrecipe.engine.config.settings import load_store_settings
    from qrecipe.registry.tracking import MlflowRun, client_for

    tracking = load_store_settings(compose([f"paths.root={tmp_path}", "tracking=local"]))
    engine = open_registry(registry_url)
    (job_id,) = _submit(engine)
    c = queue.claim(engine, "w", 60)
    mlflow_run = MlflowRun(tracking, "tiny", "w8a16@cpu", {})
    handle = begin_run(engine, IDENT, "cpu", "0", None, mlflow_run_id=mlflow_run.run_id)
    queue.record_progress(engine, job_id, c.token, variant_id=handle.variant_id, run_number=handle.run_number)
    _expire(engine, job_id)
    lost = queue.requeue_expired(engine)
    queue.mark_lost_runs(engine, lost, tracking)
    with read_session(engine) as s:
        run = s.scalar(select(VariantRun).where(VariantRun.id == handle.run_id))
        assert run.status == "failed" and f"job {job_id}: worker w stopped renewing" in run.error
        assert s.get(Variant, handle.variant_id).status == "failed"
    assert client_for(tracking).get_run(mlflow_run.run_id).info.status == "FAILED"  # not left RUNNING


def test_a_cancel_requested_before_the_final_write_wins(registry_url):
    """The worker's finish is a compare-and-set: success (or failure) written after a cancel
    request ends the job cancelled."""
    engine = open_registry(registry_url)
    ids = _submit(engine, 2)
    for job_id, outcome in zip(ids, ("succeeded", "failed")):
        c = queue.claim(engine, "w", 60)
        queue.cancel(engine, job_id)
        assert queue.finish(engine, job_id, c.token, outcome, result={}, error="x") == "cancelled"
        job = queue.get_job(engine, job_id)
        assert (job.status, job.error, job.result) == ("cancelled", "cancelled while running", None)
        assert queue.finish(engine, job_id, c.token, outcome) == "cancelled"  # asked again: the same answer


@pytest.mark.parametrize("first", ["cancel", "register"])
def test_registering_a_run_and_cancelling_its_job_are_one_decision(registry_url, first):
    """A run job's attempt records its run succeeded and ends its job in one transaction
    (queue.complete_in inside record.finish_run); cancel() locks the same row. Whichever comes
    first wins, and the other is refused."""
    from qrecipe.engine.process import Cancelled
    from qrecipe.registry.record import finish_run

    engine = open_registry(registry_url)
    (job_id,) = _submit(engine)
    c = queue.claim(engine, "w", 60)
    handle = begin_run(engine, IDENT, "cpu", "0", None)
    result = {"variant_id": handle.variant_id, "run_number": handle.run_number, "output_dir": "/runs/x"}

    def register():
        finish_run(engine, handle, {"ppl": 1.0}, "/runs/x", None, None,
                   before_commit=lambda session: queue.complete_in(session, job_id, c.token, result))

    if first == "cancel":
        assert queue.cancel(engine, job_id).cancel_requested
        with pytest.raises(Cancelled, match=f"job {job_id} was cancelled before its run was recorded"):
            register()
        assert _run_status(engine, handle.run_id) == "running"  # nothing of that transaction was written
        assert queue.get_job(engine, job_id).status == "running"  # the worker's finish ends it cancelled
        assert queue.finish(engine, job_id, c.token, "failed", error="cancelled") == "cancelled"
    else:
        register()
        with pytest.raises(queue.JobFinished, match="already succeeded"):
            queue.cancel(engine, job_id)
        job = queue.get_job(engine, job_id)
        assert (job.status, job.variant_id, job.result["output_dir"], job.cancel_requested) == \
            ("succeeded", handle.variant_id, "/runs/x", False)
        assert _run_status(engine, handle.run_id) == "succeeded"
        # the worker's own finish afterwards learns the attempt's answer
        assert queue.finish(engine, job_id, c.token, "succeeded", result=result) == "succeeded"


def test_a_search_job_registers_its_found_recipe_only_while_not_cancelled(registry_url):
    """A search job's found recipe's run is recorded mid-job (queue.hold_in inside its
    transaction): the job goes on running; a cancel that came first refuses the registration."""
    from qrecipe.engine.process import Cancelled
    from qrecipe.registry.record import finish_run

    engine = open_registry(registry_url)
    (job_id,) = _submit(engine)
    c = queue.claim(engine, "w", 60)
    first, second = (begin_run(engine, IDENT, "cpu", "0", None) for _ in range(2))
    finish_run(engine, first, {"ppl": 1.0}, "/runs/a", None, None,
               before_commit=lambda session: queue.hold_in(session, job_id, c.token, "the found recipe's run"))
    assert _run_status(engine, first.run_id) == "succeeded" and queue.get_job(engine, job_id).status == "running"
    assert queue.cancel(engine, job_id).cancel_requested
    with pytest.raises(Cancelled, match=f"job {job_id} was cancelled before the found recipe's run was recorded"):
        finish_run(engine, second, {"ppl": 1.0}, "/runs/b", None, None,
                   before_commit=lambda session: queue.hold_in(session, job_id, c.token, "the found recipe's run"))
    assert _run_status(engine, second.run_id) == "running"  # nothing of that transaction was written


def test_a_stale_attempt_cannot_register_its_run(registry_url):
    engine = open_registry(registry_url)
    (job_id,) = _submit(engine)
    c = queue.claim(engine, "w", 60)
    handle = begin_run(engine, IDENT, "cpu", "0", None)
    _expire(engine, job_id)
    queue.requeue_expired(engine)
    assert queue.cancel_state(engine, job_id, c.token) == "lost"
    from qrecipe.registry.record import finish_run

    with pytest.raises(queue.LeaseLost):
        finish_run(engine, handle, {}, "/runs/x", None, None,
                   before_commit=lambda session: queue.complete_in(session, job_id, c.token, {}))
    assert _run_status(engine, handle.run_id) == "running" and queue.get_job(engine, job_id).status == "queued"
