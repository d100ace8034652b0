"""`qrecipe jobs submit|list|show|logs|cancel`: a client of the service (`qrecipe serve`).

The service's address comes from --server or QRECIPE_SERVER (default http://127.0.0.1:8000),
the token from --token or QRECIPE_API_TOKEN. The service's one-line errors are printed as they
come; the exit code is non-zero for any error.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from qrecipe.engine.errors import QRecipeError

DEFAULT_SERVER = "http://127.0.0.1:8000"


class ServiceError(QRecipeError):
    """The service refused a request or could not be reached."""


class Client:
    def __init__(self, server: str | None = None, token: str | None = None, timeout: float = 60.0):
        import httpx

        self.server = (server or os.environ.get("QRECIPE_SERVER") or DEFAULT_SERVER).rstrip("/")
        token = token or os.environ.get("QRECIPE_API_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout)

    def _check(self, response) -> Any:
        if response.status_code >= 400:
            try:
                message = response.json()["error"]
            except Exception:  # noqa: BLE001 - not the service's JSON (a proxy, another program on the port)
                message = response.text.strip()[:300] or response.reason_phrase
            raise ServiceError(f"{message} (HTTP {response.status_code})")
        return response.json()

    def request(self, method: str, path: str, **kw) -> Any:
        import httpx

        try:
            return self._check(self.http.request(method, path, **kw))
        except httpx.TransportError as e:
            raise ServiceError(f"cannot reach the qrecipe service at {self.server} ({e}); start it with `qrecipe serve`"
                               f", or pass --server URL (or set QRECIPE_SERVER)") from None

    def submit(self, body: dict[str, Any], idempotency_key: str | None = None) -> Any:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self.request("POST", "/jobs", json=body, headers=headers)

    def stream_logs(self, job_id: int, follow: bool):
        import httpx

        try:
            with self.http.stream("GET", f"/jobs/{job_id}/logs", params={"follow": follow},
                                  timeout=httpx.Timeout(self.http.timeout.connect, read=None)) as response:
                if response.status_code >= 400:
                    response.read()
                    self._check(response)
                yield from response.iter_text()
        except httpx.TransportError as e:
            raise ServiceError(f"cannot reach the qrecipe service at {self.server} ({e})") from None


# -- the commands -----------------------------------------------------------------------------

def _client(args) -> Client:
    return Client(args.server, args.token)


def _line(job: dict) -> str:
    what = job["kind"] if job["kind"] != "run" else "run"
    if job.get("recipe"):
        what += f" {job['recipe']} of {job['model']} for {job['target']}"
    status = job["status"] + (f" ({job['stage']}, {100 * job['progress']:.0f}%)" if job["status"] == "running" else "")
    variant = job.get("variant_id") or job.get("expected_variant_id")
    return f"job {job['id']}: {status}; {what}" + (f"; variant {variant}" if variant else "")


FINAL = ("succeeded", "failed", "cancelled")


def cmd_submit(args) -> int:
    body: dict[str, Any] = {"kind": args.kind, "overrides": list(args.overrides), "priority": args.priority,
                            "sweep": args.multirun}
    if args.max_attempts:
        body["max_attempts"] = args.max_attempts
    if args.kind == "sleep":
        body["sleep"] = {"seconds": args.seconds}
    client = _client(args)
    answer = client.submit(body, args.idempotency_key)
    jobs = answer["jobs"] if args.multirun else [answer]
    if not args.wait:
        print(json.dumps(answer) if args.json else "\n".join(_line(j) for j in jobs))
        return 0
    done = [_wait(client, j["id"]) for j in jobs]
    print(json.dumps(done if args.multirun else done[0]) if args.json else "\n".join(_line(j) for j in done))
    return 0 if all(j["status"] == "succeeded" for j in done) else 1


def _wait(client: Client, job_id: int, poll: float = 1.0) -> dict:
    while (job := client.request("GET", f"/jobs/{job_id}"))["status"] not in FINAL:
        time.sleep(poll)
    return job


def cmd_list(args) -> int:
    params = {"limit": args.limit, **({"status": args.status} if args.status else {}),
              **({"before": args.before} if args.before else {})}
    answer = _client(args).request("GET", "/jobs", params=params)
    jobs = answer["jobs"]
    if args.json:
        print(json.dumps(jobs))
    elif not jobs:
        print("no jobs" + (f" {args.status}" if args.status else ""))
    else:
        print(_jobs_table(jobs))
    if answer.get("more"):  # on stderr: the table (or JSON) on stdout stays what it is
        print(f"note: {len(jobs)} jobs shown and older ones exist; see them with --before {jobs[-1]['id']} (or a "
              f"larger --limit, up to 1000)", file=sys.stderr)
    return 0


def _jobs_table(jobs: list[dict]) -> str:
    from qrecipe.engine.tables import text_table

    rows = [[str(j["id"]), j["status"], j["kind"], j.get("recipe") or "-", j.get("model") or "-",
             j.get("target") or "-", j.get("stage") or "-", f"{100 * j['progress']:.0f}%",
             f"{j['attempts']}/{j['max_attempts']}", j.get("variant_id") or "-",
             (j["timings"]["created_at"] or "")[:19]] for j in jobs]
    return text_table(["id", "status", "kind", "recipe", "model", "target", "stage", "progress", "attempts", "variant",
                       "created"], rows)


def cmd_show(args) -> int:
    job = _client(args).request("GET", f"/jobs/{args.job}")
    if args.json:
        print(json.dumps(job))
        return 0
    print(_line(job))
    t = job["timings"]
    print(f"  created {t['created_at']}, started {t['started_at'] or '-'}, finished {t['finished_at'] or '-'}")
    print(f"  attempts {job['attempts']} of {job['max_attempts']}; worker {job['worker'] or '-'}")
    if job["overrides"]:
        print(f"  overrides {' '.join(job['overrides'])}")
    for a in job.get("attempt_history", []):
        print(f"    #{a['number']} {a['outcome'] or 'running'} on {a['worker']}" + (f": {a['error']}" if a["error"]
                                                                                     else ""))
    if job["error"]:
        print(f"  error: {job['error']}")
    if job["result"]:
        print(f"  result: {json.dumps(job['result'], default=str)[:2000]}")
    return 0


def cmd_logs(args) -> int:
    for text in _client(args).stream_logs(args.job, args.follow):
        sys.stdout.write(text)
        sys.stdout.flush()
    return 0


def cmd_cancel(args) -> int:
    """Each job in turn; one that cannot be cancelled is said on stderr and the others still are."""
    client, failed = _client(args), 0
    for job_id in args.jobs:
        try:
            print(_line(client.request("POST", f"/jobs/{job_id}/cancel")), flush=True)
        except ServiceError as e:
            if len(args.jobs) == 1 or "cannot reach" in str(e):
                raise
            failed += 1
            print(f"error: {e}", file=sys.stderr)
    if failed:
        print(f"error: {failed} of {len(args.jobs)} jobs were not cancelled", file=sys.stderr)
        return 2
    return 0
