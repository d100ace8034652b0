"""The job commands (registry/cli.py registers them):

    qrecipe serve [--host H] [--port P] [--workers N] [KEY=VALUE...]   the HTTP service + N local workers
    qrecipe worker [--workers N] [KEY=VALUE...]                        workers only (e.g. on another machine)
    qrecipe jobs submit [--kind run|plan|search] [-m] [--priority N] [--wait] OVERRIDES...
    qrecipe jobs list [--status S] [--limit N] [--before ID] | show JOB | logs JOB [--follow] | cancel JOB...

serve and worker take config overrides for the operator's settings (registry.url=...,
jobs.executor=ray, jobs.lease_seconds=..., service.tokens_file=...).
"""

from __future__ import annotations

from . import client


def cmd_serve(args) -> int:
    from .service.serve import serve

    return serve(args.items, args.host, args.port, args.workers)


def cmd_worker(args) -> int:
    from .service.serve import work

    return work(args.items, args.workers)


def _client_flags(q) -> None:
    q.add_argument("--server", help=f"the service's URL (default: $QRECIPE_SERVER or {client.DEFAULT_SERVER})")
    q.add_argument("--token", help="a bearer token (default: $QRECIPE_API_TOKEN)")


def add_commands(sub, common_flags) -> None:
    """Register `serve`, `worker` and `jobs` on the CLI's subparsers."""
    p = sub.add_parser("serve", help="the job API over HTTP (docs at /docs), with a local pool of workers")
    p.add_argument("--host", help="address to bind (default service.host: 127.0.0.1; without a token always "
                                  "loopback)")
    p.add_argument("--port", type=int, help="TCP port (default service.port: 8000)")
    p.add_argument("--workers", type=int, help="worker processes to start (default jobs.workers; 0: none)")
    common_flags(p)
    p.add_argument("items", nargs="*", metavar="KEY=VALUE", help="config overrides (registry.url=..., jobs.*=...)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="run job workers against the queue in the registry database")
    p.add_argument("--workers", type=int, help="worker processes (default 1, in this process)")
    common_flags(p)
    p.add_argument("items", nargs="*", metavar="KEY=VALUE", help="config overrides (registry.url=..., jobs.*=...)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("jobs", help="submit, list, show, follow and cancel jobs on a qrecipe service")
    jsub = p.add_subparsers(dest="jobs_command", required=True)
    q = jsub.add_parser("submit", help="queue a recipe run (the same overrides as `qrecipe run`)")
    q.add_argument("--kind", choices=["run", "plan", "search", "sleep"], default="run",
                   help="run (default), plan only, or search (with search.budget.*=...)")
    q.add_argument("-m", "--multirun", action="store_true", help="expand sweep overrides (a=1,2) into one job each")
    q.add_argument("--priority", type=int, default=0, help="higher runs first")
    q.add_argument("--max-attempts", type=int, help="attempts before the job fails (default: the service's)")
    q.add_argument("--idempotency-key", help="the same key with the same request returns the first job")
    q.add_argument("--seconds", type=float, default=1.0, help="sleep jobs (queue tests): how long")
    q.add_argument("--wait", action="store_true", help="wait until the job(s) end; exit 1 unless all succeeded")
    q.add_argument("--json", action="store_true", help="print the service's JSON")
    q.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. recipe=w8a16 model=tinystories-656k")
    q.set_defaults(func=client.cmd_submit)
    q = jsub.add_parser("list", help="jobs, newest first")
    q.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    q.add_argument("--limit", type=int, default=50, help="at most this many (default 50; the service allows 1000)")
    q.add_argument("--before", type=int, help="only jobs older than this id (the next page)")
    q.add_argument("--json", action="store_true", help="print the service's JSON")
    q.set_defaults(func=client.cmd_list)
    for name, func, helptext in (("show", client.cmd_show, "one job: status, stage, attempts, error, result"),
                                 ("logs", client.cmd_logs, "a job's output"),
                                 ("cancel", client.cmd_cancel, "cancel queued jobs or stop running ones")):
        q = jsub.add_parser(name, help=helptext)
        if name == "cancel":
            q.add_argument("jobs", type=int, nargs="+", metavar="JOB", help="the jobs' ids")
        else:
            q.add_argument("job", type=int, help="the job's id")
        if name == "show":
            q.add_argument("--json", action="store_true", help="print the service's JSON")
        if name == "logs":
            q.add_argument("-f", "--follow", action="store_true", help="keep streaming until the job ends")
        q.set_defaults(func=func)
    for q in jsub.choices.values():
        _client_flags(q)
        common_flags(q)
