"""Recipe runs as jobs: a durable queue in the registry database, workers that claim jobs with
a lease and run each in its own process (locally or on Ray), and the HTTP service in front.

    models.py      the tables: submissions, jobs, their attempts and their log lines
    queue.py       submit, claim, heartbeat, finish, cancel, requeue jobs whose worker was lost
    config.py      the operator's `jobs` and `service` settings
    requests.py    what a client may send (sizes and fields checked before anything runs)
    overrides.py   the allowlist of config keys a request may override
    paths.py       model and data paths of a request must lie under the allowed roots
    submit.py      request -> composed config + resolved plan -> queued job(s)
    attempt.py     the process that runs one attempt of one job (`python -m ...attempt`)
    progress.py    a run's announced steps -> the job's stage and progress
    child.py       starts that process and carries its log and progress to the database
    worker.py      the claim / heartbeat / finish loop; executors/ run the attempt (local, ray)
    service/       the FastAPI app, bearer tokens, routes, `qrecipe serve` and `qrecipe worker`
    client.py      `qrecipe jobs submit|list|show|logs|cancel`; commands.py registers them all

Kept free of heavy imports: the attempt process of a trivial job imports this package.
"""
