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


def test_the_registry_run_of_a_lost_attempt_is_marked_failed(registry_url):
    engine = open_registry(registry_url)
    ident = VariantIdentity(model="tiny", model_source="/m", model_type="llama", target="cpu", recipe_name="w8a16",
                            recipe_hash="r", plan_hash="p", scheme_mix="W8A16:1", requires=())
    (job_id,) = _submit(engine)
    c = queue.claim(engine, "w", 60)
    handle = begin_run(engine, ident, "cpu", "0", None)
    queue.record_progress(engine, job_id, c.token, variant_id=handle.variant_id, run_number=handle.run_number)
    _expire(engine, job_id)
    lost = queue.requeue_expired(engine)
    queue.mark_lost_runs(engine, lost)
    with read_session(engine) as s:
        run = s.scalar(select(VariantRun).where(VariantRun.id == handle.run_id))
        assert run.status == "failed" and f"job {job_id}: worker w stopped renewing" in run.error
        assert s.get(Variant, handle.variant_id).status == "failed"
