"""Queue throughput: how many trivial jobs per second the queue hands out, on SQLite and on
PostgreSQL, with 1, 2 and 4 claiming processes. Figures, not tests (bench/JOBS.md records them).

    python bench/jobs.py                                  # SQLite, and PostgreSQL in a throwaway cluster
    python bench/jobs.py --postgres-url postgresql://USER:PW@HOST/DB --json out.json

Three figures per database and number of claimers (each in a fresh database):
  claim          jobs claimed per second: each process claims until the queue is empty (one
                 write transaction per claim: lease, attempt row)
  claim+finish   jobs claimed and marked succeeded per second (two transactions per job: the
                 least a worker does for a job that does nothing)
  end to end     --end-to-end: `sleep 0` jobs through real workers, each attempt in its own
                 process (what a worker pays per job besides the job's own work)
Every run checks that each job was claimed exactly once.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _submit(url: str, n: int) -> None:
    from qrecipe.registry.db import open_registry
    from qrecipe.registry.jobs import queue

    engine = open_registry(url)
    spec = queue.JobSpec(kind="sleep", priority=0, max_attempts=1, overrides=[], params={"seconds": 0})
    for start in range(0, n, 500):
        queue.submit(engine, [spec] * min(500, n - start), request_hash=f"bench-{start}", actor="bench")


def _claimer(url: str, finish: bool, ready, go, out) -> None:
    from qrecipe.registry.db import open_registry
    from qrecipe.registry.jobs import queue

    engine = open_registry(url)
    name = f"bench-{os.getpid()}"
    ready.release()
    go.wait()
    claimed = []
    while (c := queue.claim(engine, name, 600)) is not None:
        claimed.append(c.job.id)
        if finish:
            queue.finish(engine, c.job.id, c.token, "succeeded", result={})
    out.put((claimed, time.perf_counter()))


def _worker(url: str, stop) -> None:
    from qrecipe.registry.db import open_registry
    from qrecipe.registry.jobs.config import JobsConfig
    from qrecipe.registry.jobs.worker import Worker

    cfg = JobsConfig(lease_seconds=60, heartbeat_seconds=1, poll_seconds=0.05, log_flush_seconds=0.2)
    worker = Worker(open_registry(url), url, cfg, {})
    while not stop.is_set():
        if not worker.run_once():
            time.sleep(0.02)


def _check(url: str, n: int, claimed: list[int]) -> None:
    from sqlalchemy import func, select

    from qrecipe.registry.db import open_registry, read_session
    from qrecipe.registry.jobs.models import Job

    assert len(claimed) == n and len(set(claimed)) == n, "a job was claimed twice or not at all"
    with read_session(open_registry(url)) as s:
        assert s.scalar(select(func.max(Job.attempts))) == 1


def claim_rate(url: str, n: int, processes: int, finish: bool) -> float:
    ctx = mp.get_context("spawn")
    _submit(url, n)
    ready, go, out = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(url, finish, ready, go, out)) for _ in range(processes)]
    for p in procs:
        p.start()
    for _ in procs:  # every process has imported and connected before the clock starts
        ready.acquire()
    start = time.perf_counter()
    go.set()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    _check(url, n, [i for ids, _ in results for i in ids])
    return n / (max(end for _, end in results) - start)


def end_to_end_rate(url: str, n: int, processes: int) -> float:
    from qrecipe.registry.db import open_registry
    from qrecipe.registry.jobs import queue

    ctx = mp.get_context("spawn")
    _submit(url, n)
    engine = open_registry(url)
    stop = ctx.Event()
    procs = [ctx.Process(target=_worker, args=(url, stop)) for _ in range(processes)]
    start = time.perf_counter()
    for p in procs:
        p.start()
    while queue.list_jobs(engine, "queued", limit=1) or queue.list_jobs(engine, "running", limit=1):
        time.sleep(0.05)
    elapsed = time.perf_counter() - start
    stop.set()
    for p in procs:
        p.join()
    jobs = queue.list_jobs(engine, limit=n)
    assert len(jobs) == n and {j.status for j in jobs} == {"succeeded"} and {j.attempts for j in jobs} == {1}
    return n / elapsed


def _databases(args) -> tuple[dict[str, object], list]:
    """name -> a function giving a fresh database URL; and what to stop afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="qrecipe-bench-"))
    counter = iter(range(10**6))
    dbs: dict[str, object] = {"sqlite": lambda: f"sqlite:///{folder / f'q{next(counter)}.db'}"}
    stops = [lambda: shutil.rmtree(folder, ignore_errors=True)]
    if "postgresql" in args.backends:
        url = args.postgres_url
        if url is None:
            sys.path.insert(0, str(ROOT / "tests"))
            from throwaway_postgres import Cluster, start_cluster

            cluster = start_cluster()
            if not isinstance(cluster, Cluster):
                raise SystemExit(f"no PostgreSQL: {cluster}; pass --postgres-url")
            stops.append(cluster.stop)
            url = cluster.url
        dbs["postgresql"] = lambda: _fresh_pg(url, next(counter))
    return {k: v for k, v in dbs.items() if k in args.backends}, stops


def _fresh_pg(url: str, n: int) -> str:
    import psycopg
    from sqlalchemy.engine import make_url

    base = make_url(url)
    name = f"qrecipe_bench_{os.getpid()}_{n}"
    with psycopg.connect(host=base.host, port=base.port, user=base.username, password=base.password,
                         dbname=base.database, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    return base.set(database=name).render_as_string(hide_password=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per claim measurement")
    parser.add_argument("--claimers", default="1,2,4", help="numbers of claiming processes")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--postgres-url", help="an existing server (its role needs CREATEDB)")
    parser.add_argument("--end-to-end", type=int, default=200, metavar="N",
                        help="jobs for the end-to-end figure (0: skip it)")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    dbs, stops = _databases(args)
    rows = []
    try:
        for name, fresh in dbs.items():
            for k in (int(x) for x in args.claimers.split(",")):
                row = {"database": name, "processes": k,
                       "claim_per_s": claim_rate(fresh(), args.jobs, k, finish=False),
                       "claim_finish_per_s": claim_rate(fresh(), args.jobs, k, finish=True)}
                if args.end_to_end:
                    row["end_to_end_per_s"] = end_to_end_rate(fresh(), args.end_to_end, k)
                rows.append(row)
                print(f"{name:<10} {k} process(es): " + ", ".join(f"{key} {value:,.0f}" if value >= 10 else
                                                               f"{key} {value:.1f}" for key, value in row.items()
                                                               if key.endswith("_per_s")), flush=True)
    finally:
        for stop in stops:
            stop()
    meta = {"cpus": os.cpu_count(), "jobs": args.jobs, "end_to_end_jobs": args.end_to_end, "python": sys.version}
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
