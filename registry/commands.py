"""The registry's commands (registry/cli.py registers them):

    qrecipe variants list [--model M] [--json]          every variant, its status and headline numbers
    qrecipe variants show VARIANT [--json]              one variant (id or unique prefix): metrics and runs
    qrecipe variants compare [VARIANT...] [--model M]   the decision matrix (all measured variants by default)
    qrecipe variants promote|rollback|history|sync     production stages (registry/promotion_commands.py)
    qrecipe report MODEL [--out DIR]                    the matrix as Markdown + PNG plots, logged to MLflow
    qrecipe ui [--host H] [--port P]                    the MLflow UI on the tracking store

Each also takes config overrides (registry.url=..., tracking.uri=..., QRECIPE_HOME...) to say
which registry and store to read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from qrecipe.engine import metric_names as M
from qrecipe.engine.errors import ConfigError, QRecipeError

from .promotion_commands import add_promotion_commands


def settings_for(overrides: list[str]):
    """The whole config, validated: what commands that judge runs by the eval protocol this
    machine would measure under need (compare, report, promote)."""
    from qrecipe.engine.config import compose, load_settings

    return load_settings(compose(overrides))


def store_settings_for(overrides: list[str]):
    """Only where the registry and the tracking store are (and the operator's sections): the
    recipe and model are not needed, so nothing heavy (torch) loads for the commands that only
    read records (variants list, show, history, sync; export; ui)."""
    from qrecipe.engine.config.compose import compose
    from qrecipe.engine.config.settings import load_store_settings

    return load_store_settings(compose(overrides))


def split_items(items: list[str]) -> tuple[list[str], list[str]]:
    """(variant refs, config overrides): overrides are the items with '='."""
    return [i for i in items if "=" not in i], [i for i in items if "=" in i]


def one_ref(items: list[str], usage: str) -> tuple[str, list[str]]:
    """(the one positional argument, config overrides); `usage` is the error when there is not
    exactly one."""
    refs, overrides = split_items(items)
    if len(refs) != 1:
        raise ConfigError(usage)
    return refs[0], overrides


def open_for(settings, catch_up: bool = True, create: bool = False):
    """The registry; with catch_up, promotions MLflow missed are mirrored first (promotion_commands).
    Only a command that records (create=True) makes a registry where none exists."""
    from .db import open_registry, registry_url
    from .promotion_commands import catch_up_mirror

    if not settings.registry.enabled:
        raise ConfigError("registry.enabled: the registry is off in this config; drop registry=off")
    engine = open_registry(registry_url(settings), create=create)
    if catch_up:
        catch_up_mirror(settings, engine)
    return engine


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def cmd_list(args) -> int:
    from qrecipe.engine.tables import text_table

    from .queries import list_variants

    refs, overrides = split_items(args.items)
    if refs:
        raise ConfigError(f"variants list: unexpected argument {refs[0]!r}; filter with --model NAME")
    from .db import NoRegistry

    try:
        engine = open_for(store_settings_for(overrides))
    except NoRegistry as e:
        print("[]" if args.json else str(e))
        return 0
    variants = list_variants(engine, args.model)
    if args.json:
        print(json.dumps([{"id": v.id, "model": v.base_model.name, "recipe": v.recipe_name, "target": v.target,
                           "status": v.status, "runs": v.runs_count, "scheme_mix": v.scheme_mix,
                           "output_dir": v.output_dir, "mlflow_run_id": v.mlflow_run_id, "metrics": v.metrics,
                           "updated_at": v.updated_at} for v in variants], default=str))
        return 0
    if not variants:
        print("no variants yet: `qrecipe run` records one")
        return 0
    rows = []
    for v in variants:
        m = v.metrics or {}
        rows.append([v.id, v.base_model.name, v.recipe_name, v.target, v.status, str(v.runs_count),
                     _fmt(m.get(M.PPL_DELTA_PCT), "+.2f"), _fmt(m.get(M.KL_MEAN), ".4f"),
                     _fmt(m.get(M.WEIGHT_REDUCTION), ".2f"), v.scheme_mix, str(v.updated_at)[:19]])
    print(text_table(["variant", "model", "recipe", "target", "status", "runs", "ppl %", "KL", "memory x", "schemes",
                  "updated"], rows))
    return 0


def cmd_show(args) -> int:
    from qrecipe.engine.evaluate.protocol import describe_protocol

    from .queries import find_variant, variant_runs

    ref, overrides = one_ref(args.items, "variants show: name one variant (its id or a unique prefix), "
                                          "e.g. qrecipe variants show 3f9a")
    engine = open_for(store_settings_for(overrides))
    v = find_variant(engine, ref)
    runs = variant_runs(engine, v.id)
    if args.json:
        print(json.dumps({"id": v.id, "model": v.base_model.name, "recipe": v.recipe_name, "target": v.target,
                          "recipe_hash": v.recipe_hash, "plan_hash": v.plan_hash, "scheme_mix": v.scheme_mix,
                          "requires": v.requires, "status": v.status, "device": v.device, "metrics": v.metrics,
                          "output_dir": v.output_dir, "mlflow_run_id": v.mlflow_run_id,
                          "runs": [{"number": r.run_number, "status": r.status, "device": r.device,
                                    "output_dir": r.output_dir, "mlflow_run_id": r.mlflow_run_id, "error": r.error,
                                    "eval_protocol": r.eval_protocol, "eval_protocol_spec": r.eval_protocol_spec,
                                    "started_at": r.started_at, "finished_at": r.finished_at} for r in runs]},
                         default=str))
        return 0
    print(f"variant {v.id}: {v.recipe_name} of {v.base_model.name} for {v.target} ({v.status})")
    print(f"  schemes {v.scheme_mix}; needs {', '.join(v.requires) or 'nothing special'}")
    print(f"  recipe hash {v.recipe_hash}, plan hash {v.plan_hash}")
    print(f"  output {v.output_dir or '-'}\n  MLflow run {v.mlflow_run_id or '-'}")
    if v.metrics:
        print("  metrics (latest successful run):")
        for key in sorted(v.metrics):
            value = v.metrics[key]
            print(f"    {key:<36} {value:.6g}" if isinstance(value, float) else f"    {key:<36} {value}")
    print(f"  runs ({len(runs)}):")
    for r in runs:
        line = f"    #{r.run_number} {r.status:<9} {str(r.started_at)[:19]} on {r.device}"
        print(line + (f": {r.error.splitlines()[0][:120]}" if r.error else ""))
        print(f"        eval protocol {r.eval_protocol or 'unrecorded'}: {describe_protocol(r.eval_protocol_spec)}")
    return 0


def cmd_compare(args) -> int:
    from .compare import legend, matrix_row, render, shipped_targets
    from .protocols import choose_runs
    from .queries import find_variant, list_variants

    from .db import NoRegistry

    refs, overrides = split_items(args.items)
    settings = settings_for(overrides)
    try:
        engine = open_for(settings)
    except NoRegistry as e:
        if refs:
            raise
        print("[]" if args.json else str(e))
        return 0
    variants = [find_variant(engine, r) for r in refs] if refs else list_variants(engine, args.model, True)
    if not variants:
        print("no measured variants to compare: `qrecipe run` records one")
        return 0
    selection = choose_runs(engine, settings, variants, protocol=args.protocol, any_protocol=args.any_protocol,
                            named=bool(refs))
    targets = shipped_targets()
    if args.json:
        print(json.dumps({"protocol": selection.protocol,
                          "protocols": {h: selection.specs.get(h) for h in selection.by_protocol()},
                          "rows": [matrix_row(m, targets) for m in selection.rows],
                          "missing": selection.missing}, default=str))
        return 0
    print(render(selection, targets) if selection.rows else "no variant has a successful run under the requested "
          "eval protocol:\n" + "\n".join(f"  {line}" for line in selection.missing_lines())
          + "\npass --protocol HASH or --any-protocol")
    print()
    print(legend())
    for model in ([args.model] if args.model else sorted({v.base_model.name for v in variants})):
        _print_searches(engine, model)
    return 0


def _print_searches(engine, model: str) -> None:
    """The Pareto fronts of the model's latest searches (registry/search_flow.py)."""
    from .queries import list_searches
    from .search_flow import points_table

    for s in list_searches(engine, model):
        budget = ", ".join(f"{k} {v:g}" for k, v in s.budget.items())
        print(f"\nsearch #{s.id} of {model} for {s.target} ({budget}; {s.settings.get('measure')} on "
              f"{s.settings.get('calib_data')}): recipe {s.recipe_name}"
              + (f", variant {s.variant_id}" if s.variant_id else "")
              + f"; plans measured on {s.settings.get('eval_data')}"
              + " (* the found recipe; front: on the Pareto front of measured KL / perplexity against weight bytes)")
        print(points_table(s.points))


def cmd_report(args) -> int:
    from .report import write_report

    ref, overrides = one_ref(args.items, "report: name one model, e.g. qrecipe report smollm2-135m "
                                          "(`qrecipe variants list` shows them)")
    result = write_report(settings_for(overrides), ref, Path(args.out).resolve() if args.out else None,
                          protocol=args.protocol, any_protocol=args.any_protocol)
    print(f"report: {result['report']}")
    for p in result["plots"]:
        print(f"plot:   {p}")
    if result["mlflow_run_id"]:
        print(f"MLflow: run {result['mlflow_run_id']} in {result['tracking_uri']}")
    return 0


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _stderr_fd():
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a captured stream without a file descriptor
        return subprocess.DEVNULL


def runs_tables(settings, address: str) -> list[str]:
    """One line per qrecipe experiment in the store: the address of its runs table (MLflow 3
    opens an experiment on its GenAI Traces page otherwise)."""
    from .tracking import client_for, runs_table_url

    prefix = settings.tracking.experiment_prefix
    exps = [e for e in client_for(settings).search_experiments() if e.name.startswith(prefix)]
    return [f"  {e.name} runs: {runs_table_url(address, e.experiment_id)}" for e in sorted(exps, key=lambda e: e.name)]


def cmd_ui(args) -> int:
    from .tracking import artifact_root, ensure_store, tracking_uri

    refs, overrides = split_items(args.items)
    if refs:
        raise ConfigError(f"ui: unexpected argument {refs[0]!r}; use --host/--port, and KEY=VALUE overrides")
    settings = store_settings_for(overrides)
    uri = tracking_uri(settings)
    if not uri.startswith("sqlite:"):
        print(f"tracking.uri is the server {uri}: open it in a browser (qrecipe ui serves the embedded store only)")
        print("\n".join(runs_tables(settings, uri)))
        return 0
    artifacts = artifact_root(settings)
    ensure_store(uri, artifacts)
    mlflow = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow) if mlflow.exists() else "mlflow", "server", "--backend-store-uri", uri,
           "--default-artifact-root", artifacts, "--host", args.host, "--port", str(args.port), "--workers", "1"]
    # One worker and no background job runner (huey): the UI starts in seconds on two cores.
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_SERVER_JOB_ENABLE_PERIODIC_TASKS="false")
    # The server's own messages go to stderr: stdout carries only the address line below.
    proc = subprocess.Popen(cmd, env=env, stdout=_stderr_fd())
    address = f"http://{args.host}:{args.port}"
    try:
        deadline = time.monotonic() + args.timeout
        while not _answers(f"{address}/health"):
            if proc.poll() is not None:
                raise QRecipeError(f"ui: the MLflow server exited with code {proc.returncode} (is port {args.port} "
                                   f"taken? pass --port N)")
            if time.monotonic() > deadline:
                raise QRecipeError(f"ui: the MLflow server did not answer on {address} within {args.timeout}s")
            time.sleep(0.5)
        print(f"MLflow UI: {address}  (store {uri}; Ctrl-C stops it)", flush=True)
        tables = runs_tables(settings, address)
        if tables:
            print("each model's runs table (MLflow 3 may open an experiment on its GenAI Traces page):\n"
                  + "\n".join(tables), flush=True)
        return proc.wait()
    except BaseException:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise


def add_protocol_flags(q) -> None:
    q.add_argument("--protocol", metavar="HASH", help="use runs measured under this eval protocol (a hash or prefix; "
                                                       "default: the one this config measures under)")
    q.add_argument("--any-protocol", action="store_true",
                   help="use each variant's latest run whatever its eval protocol (tables split by protocol)")


def add_commands(sub, common_flags) -> None:
    """Register `variants`, `report` and `ui` on the CLI's subparsers."""
    p = sub.add_parser("variants", help="list, show, compare and promote the variants in the registry")
    vsub = p.add_subparsers(dest="variants_command", required=True)
    for name, func, helptext in (("list", cmd_list, "every variant with its status and headline numbers"),
                                 ("show", cmd_show, "one variant (id or unique prefix): its metrics and runs"),
                                 ("compare", cmd_compare, "the decision matrix for some or all measured variants")):
        q = vsub.add_parser(name, help=helptext)
        if name != "show":
            q.add_argument("--model", help="only this base model's variants")
        if name == "compare":
            add_protocol_flags(q)
        q.add_argument("--json", action="store_true", help="print JSON")
        common_flags(q)
        q.add_argument("items", nargs="*", metavar="VARIANT|KEY=VALUE",
                       help="variant ids (or prefixes) and config overrides such as registry.url=...")
        q.set_defaults(func=func)
    add_promotion_commands(vsub, common_flags)

    p = sub.add_parser("report", help="write a model's decision matrix as Markdown + plots and log it to MLflow")
    p.add_argument("--out", help="folder for report.md and the PNGs (default: paths.root/reports/MODEL-TIME)")
    add_protocol_flags(p)
    common_flags(p)
    p.add_argument("items", nargs="+", metavar="MODEL|KEY=VALUE", help="the base model name, then config overrides")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("ui", help="start the MLflow UI on the embedded tracking store")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--timeout", type=float, default=180, help="seconds to wait for the server to answer")
    common_flags(p)
    p.add_argument("items", nargs="*", metavar="KEY=VALUE", help="config overrides (e.g. tracking.uri=...)")
    p.set_defaults(func=cmd_ui)
