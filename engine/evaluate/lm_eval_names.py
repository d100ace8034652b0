"""Names of the lm-evaluation-harness metrics, in one place (metrics.json, MLflow, the
registry, gates, compare and the report read them from here).

Per task T (flat names, like the rest of metrics.json):
    lm_eval.T.items                      items scored (the first eval.lm_eval.limit of the task)
    lm_eval.T.acc, lm_eval.T.acc_stderr  the variant's accuracy and lm-eval's standard error
    lm_eval.T.acc_baseline, lm_eval.T.acc_stderr_baseline     the same for the baseline
    lm_eval.T.acc_delta                  variant minus baseline
    lm_eval.T.acc_norm...                the same five for length-normalized accuracy, where the
                                         task defines it (ARC, PIQA, OpenBookQA)
    lm_eval.T.flip_rate                  share of items whose chosen answer (the one `acc`
                                         scores) differs from the baseline's
    lm_eval.T.flips_correct_to_wrong     share of items the baseline got right and the variant wrong
    lm_eval.T.flips_wrong_to_correct     share of items the baseline got wrong and the variant right
Over all tasks' items pooled: lm_eval.items, lm_eval.flip_rate, lm_eval.flips_correct_to_wrong,
lm_eval.flips_wrong_to_correct, and lm_eval.worst_task (the task with the highest flip rate).
With more than two choices an item can flip between two wrong answers, so the two
directions need not add up to the flip rate.
"""

from __future__ import annotations

PREFIX = "lm_eval"
ITEMS = "items"
ACC = "acc"
ACC_NORM = "acc_norm"
STDERR = "_stderr"
BASELINE = "_baseline"
DELTA = "_delta"
FLIP_RATE = "flip_rate"
CORRECT_TO_WRONG = "flips_correct_to_wrong"
WRONG_TO_CORRECT = "flips_wrong_to_correct"
WORST_TASK = "worst_task"
ACCURACIES = (ACC, ACC_NORM)


def task_metric(task: str, name: str) -> str:
    """e.g. task_metric("piqa", FLIP_RATE) == "lm_eval.piqa.flip_rate"."""
    return f"{PREFIX}.{task}.{name}"


def overall_metric(name: str) -> str:
    """e.g. overall_metric(FLIP_RATE) == "lm_eval.flip_rate" (all tasks' items pooled)."""
    return f"{PREFIX}.{name}"


def tasks_in(metrics: dict) -> list[str]:
    """The lm-eval tasks a metrics dict holds, in their recorded order."""
    found: dict[str, None] = {}
    for key in metrics:
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == PREFIX and parts[2] == ITEMS:
            found[parts[1]] = None
    return list(found)
