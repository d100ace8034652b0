"""An example for the --help of every command, in one table (a test checks that every command
has one, and the README's usage lines are these)."""

from __future__ import annotations

import argparse

EXAMPLES: dict[str, tuple[str, ...]] = {
    "plan": ("qrecipe plan recipe=mixed recipe.rules.mlp.group_size=64",
             "qrecipe plan --json model=tinystories-656k recipe=w4a16 target=h100"),
    "run": ("qrecipe run recipe=w8a16 --json",
            "qrecipe run -m recipe=w8a16,w4a16 recipe.base.group_size=64   # one run per point"),
    "search": ("qrecipe search search.budget.bits_per_weight=4.5",
               "qrecipe search search.budget.max_kl=0.05 search.sensitivity=exact 'search.candidates=[keep,W8A16,"
               "W4A16:g64]'"),
    "recipes": ("qrecipe recipes", "QRECIPE_RECIPE_PATH=~/my-recipes qrecipe recipes --json"),
    "variants": ("qrecipe variants list", "qrecipe variants show 3f9a"),
    "variants list": ("qrecipe variants list --model smollm2-135m",),
    "variants show": ("qrecipe variants show 3f9a --json",),
    "variants compare": ("qrecipe variants compare", "qrecipe variants compare 3f9a 7c21"),
    "variants promote": ("qrecipe variants promote 3f9a",
                         'qrecipe variants promote 7c21 --force --reason "4-bit saving accepted by QA"'),
    "variants rollback": ("qrecipe variants rollback smollm2-135m --target h100",),
    "variants history": ("qrecipe variants history smollm2-135m --target cpu",),
    "variants sync": ("qrecipe variants sync", "qrecipe variants sync --all"),
    "report": ("qrecipe report smollm2-135m",),
    "ui": ("qrecipe ui --port 5000",),
    "export": ("qrecipe export 3f9a out/smollm2-w4a16 --format compressed-tensors",
               "qrecipe export qrecipe_runs/runs/RUN new/folder/ct --parents"),
    "serve": ("qrecipe serve --workers 2", "qrecipe serve --host 0.0.0.0 service.tokens_file=/etc/qrecipe/tokens"),
    "worker": ("qrecipe worker --workers 2 registry.url=postgresql://qrecipe@db/qrecipe",),
    "jobs": ("qrecipe jobs submit recipe=w8a16 model=tinystories-656k", "qrecipe jobs list"),
    "jobs submit": ("qrecipe jobs submit recipe=w8a16 model=tinystories-656k data@eval.data=tinystories --wait",
                    "qrecipe jobs submit -m recipe=w8a16,w4a16 recipe.base.group_size=64",
                    "qrecipe jobs submit --kind search search.budget.bits_per_weight=4.5"),
    "jobs list": ("qrecipe jobs list --status running", "qrecipe jobs list --limit 200 --before 1200"),
    "jobs show": ("qrecipe jobs show 12",),
    "jobs logs": ("qrecipe jobs logs 12 --follow",),
    "jobs cancel": ("qrecipe jobs cancel 12", "qrecipe jobs cancel 12 13 14"),
}


def subparsers(parser: argparse.ArgumentParser, path: str = ""):
    """(command path, parser) for every command under parser, e.g. ("variants promote", ...)."""
    for action in parser._actions:  # argparse keeps subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{path} {name}".strip()
                yield full, sub
                yield from subparsers(sub, full)


def add_examples(parser: argparse.ArgumentParser) -> None:
    for path, sub in subparsers(parser):
        lines = EXAMPLES.get(path)
        if lines:
            sub.formatter_class = argparse.RawDescriptionHelpFormatter
            sub.epilog = "examples:\n" + "\n".join(f"  {line}" for line in lines)
