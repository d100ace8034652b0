"""A job's stage comes from the steps a recipe run announces: every step engine/run.py announces
must be one the progress table knows, so a new step cannot leave a job's stage stale unnoticed."""

from __future__ import annotations

import ast
import inspect

from qrecipe.engine import run as run_module
from qrecipe.registry.jobs.progress import RUN_STEPS, run_stage


def _announced_steps() -> list[str]:
    """The leading literal text of every step(...) call in engine/run.py."""
    found = []
    for node in ast.walk(ast.parse(inspect.getsource(run_module))):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "step" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.BinOp):  # "literal" + more
                arg = arg.left
            if isinstance(arg, ast.JoinedStr):
                arg = arg.values[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.append(arg.value)
    return found


def test_every_step_of_a_run_is_a_known_stage():
    steps = _announced_steps()
    assert len(steps) >= 8  # the parse found the run's steps (not just the describe_start line)
    unknown = [s for s in steps if run_stage(s) is None]
    assert unknown == [], f"add these steps to registry/jobs/progress.py RUN_STEPS: {unknown}"


def test_progress_only_moves_forward():
    fractions = [fraction for _, _, fraction in RUN_STEPS]
    assert fractions == sorted(fractions) and 0 < fractions[0] and fractions[-1] < 1
