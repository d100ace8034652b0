"""The `qrecipe` command line.

    qrecipe recipes [--json]                           the recipes, their descriptions and folders
    qrecipe plan [--json] [--expand] OVERRIDES...      resolve the recipe, print the plan (no weights load)
    qrecipe run  [--json] [-m] [--cfg job] OVERRIDES... quantize, measure against the baseline, write a
                                                        variant folder, record it (registry + MLflow)
    qrecipe search [--json] OVERRIDES...                the cheapest per-layer mix for a budget, written as a
                                                        recipe, run and measured; its Pareto front recorded
    qrecipe variants list|show|compare ...             the registry's variants; compare: decision matrix
    qrecipe report MODEL                               the matrix as Markdown + plots, logged to MLflow
    qrecipe ui [--host H] [--port P]                   the MLflow UI on the tracking store
    qrecipe export VARIANT OUT_DIR [--format F]        the checkpoint in a format vLLM/transformers load
    qrecipe serve [--port P] [--workers N]             the job API over HTTP, with N local workers
    qrecipe worker [--workers N]                       job workers on the queue (registry database)
    qrecipe jobs submit|list|show|logs|cancel ...      a client of the job API

OVERRIDES are Hydra overrides (recipe=mixed, model=tinystories-656k, +recipe.rules.x.match=...,
~recipe.rules.x, data@eval.data=text eval.data.path=F). `-m` expands Hydra sweep syntax
(recipe=w8a16,w4a16) into one run per point. Errors print one line; --traceback shows more.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from qrecipe.engine.errors import QRecipeError
from qrecipe.engine.process import Terminated, quiet_libraries, raise_terminated

# The entry point lives at the end of the flow (engine <- registry <- jobs): it is the one place
# that wires the engine's run to the registry's recorder.


def cmd_plan(args) -> int:
    from qrecipe.engine.config import compose, load_settings
    from qrecipe.engine.plan.render import render_plan
    from qrecipe.engine.planning import build_plan, check_inputs

    cfg = compose(args.overrides)
    if args.cfg:
        print(_cfg_yaml(cfg, args.cfg))
        return 0
    settings = load_settings(cfg)
    plan, _ = build_plan(settings)
    check_inputs(settings, plan)  # what `qrecipe run` would refuse, refused here too
    print(plan.to_json() if args.json else render_plan(plan, expand=args.expand))
    return 0


def _cfg_yaml(cfg, which: str) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(cfg.recipe if which == "recipe" else cfg, resolve=False)


def cmd_run(args) -> int:
    from qrecipe.engine.config import compose, expand_sweep
    from qrecipe.engine.run import run

    from .recorder import RunRecorder

    points = expand_sweep(args.overrides) if args.multirun else [list(args.overrides)]
    if args.cfg:
        for point in points:
            print(_cfg_yaml(compose(point), args.cfg))
        return 0
    if args.multirun:
        configs = [compose(point) for point in points]  # a bad point fails the sweep before any work
        print(f"sweep: {len(points)} runs", file=sys.stderr)
    else:
        configs = [compose(points[0])]
    failures = 0
    for i, (point, cfg) in enumerate(zip(points, configs)):
        if args.multirun:
            print(f"[{i + 1}/{len(points)}] {' '.join(point)}", file=sys.stderr)
        try:
            result = run(cfg, recorder=RunRecorder(), progress=not args.no_progress)
        except QRecipeError as e:
            if not args.multirun:
                raise
            failures += 1
            print(f"error: {e}", file=sys.stderr)
            continue
        print(json.dumps(result.summary(), default=str) if args.json else result.human(), flush=True)
    if failures:
        print(f"error: {failures} of {len(points)} sweep runs failed", file=sys.stderr)
        return 2
    return 0


def cmd_recipes(args) -> int:
    """The recipes recipe=NAME can choose: shipped ones, then QRECIPE_RECIPE_PATH's (a later
    folder's recipe of the same name wins); a file that cannot be read is listed with why."""
    from qrecipe.engine.config.recipes import recipe_files
    from qrecipe.engine.tables import text_table

    files = recipe_files()
    if args.json:
        print(json.dumps([{"name": f.name, "description": f.description, "path": str(f.path), "error": f.error}
                          for f in files.values()]))
        return 0
    rows = [[f.name, f"cannot read: {f.error}" if f.error else f.description or "-", str(f.path.parent)]
            for f in files.values()]
    print(text_table(["recipe", "description", "from"], rows))
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"qrecipe {version('qrecipe')}"
    except PackageNotFoundError:  # run from a checkout that is not installed
        return "qrecipe (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qrecipe", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("recipes", help="list the recipes (recipe=NAME), their descriptions and the folders they "
                                       "come from")
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
    p.set_defaults(func=cmd_recipes)

    def common(p):
        p.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
        p.add_argument("--cfg", choices=["job", "recipe"], help="print the composed config (or recipe) and exit")
        p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. recipe=mixed model=tinystories-656k")

    p = sub.add_parser("plan", help="resolve the recipe into a per-layer plan (no weights load)")
    p.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    p.add_argument("--expand", action="store_true", help="one row per layer instead of folding repeated blocks")
    common(p)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("run", help="quantize, measure and record a variant")
    p.add_argument("--json", action="store_true", help="end stdout with one JSON object (one per sweep point)")
    p.add_argument("-m", "--multirun", action="store_true", help="expand sweep overrides (a=1,2) into runs")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    common(p)
    p.set_defaults(func=cmd_run)

    from .cli_examples import add_examples
    from .commands import add_commands
    from .export_command import add_export_command
    from .jobs.commands import add_commands as add_job_commands
    from .search_command import add_search_command

    def traceback_flag(q):
        q.add_argument("--traceback", action="store_true", help="show the full traceback on errors")

    add_search_command(sub, traceback_flag)
    add_commands(sub, traceback_flag)
    add_export_command(sub, traceback_flag)
    add_job_commands(sub, traceback_flag)
    add_examples(parser)
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """argparse fills a list positional once, so in `variants promote 3f9a --force --reason R
    registry.url=...` the trailing KEY=VALUE would be refused; it belongs to that same list."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    target = next((name for name in ("items", "overrides") if isinstance(getattr(args, name, None), list)), None)
    if extra and (target is None or any(e.startswith("-") for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        getattr(args, target).extend(extra)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_libraries()
    in_main_thread = threading.current_thread() is threading.main_thread()  # where handlers can be set
    previous = signal.signal(signal.SIGTERM, raise_terminated) if in_main_thread else None
    try:
        code = args.func(args)
        sys.stdout.flush()  # here, so that a reader that went away is handled below, not at exit
        return code
    except QRecipeError as e:
        if args.traceback:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:
        return _closed_stdout()
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("error: terminated", file=sys.stderr)
        return Terminated.exit_code
    except Exception as e:  # noqa: BLE001 - the one place that turns crashes into one line
        if args.traceback:
            raise
        print(f"error: {type(e).__name__}: {e} (rerun with --traceback for details)", file=sys.stderr)
        return 1
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _closed_stdout() -> int:
    """The reader of stdout went away (`qrecipe jobs list | head`): exit quietly, as `ls | head`
    does. Python would otherwise complain when it flushes stdout at exit; stdout is pointed at
    /dev/null for that flush (the recipe in Python's signal documentation)."""
    import os

    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # a captured stdout without a file descriptor
        pass
    return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
