"""Multiple-choice accuracy through lm-evaluation-harness, and flips against the baseline.

Both models are scored in this process through lm-eval's Hugging Face wrapper
(`HFLM(pretrained=model, tokenizer=...)`: the model object itself, quantized modules and all,
never reloaded), zero-shot, on the first `eval.lm_eval.limit` items of each task. lm-eval
gives each task's accuracy (and normalized accuracy where the task defines it) with its
standard error; from its per-item log-likelihoods we keep each item's chosen answer (the
argmax lm-eval's `acc` scores) and whether it was right. The baseline's side is cached with
its other outputs (baseline_cache.py), so a variant only pays for its own pass.

Flips (Dutta et al. 2024, "Accuracy is Not All You Need"): an item flips when the variant
chooses another answer than the baseline did; correct->wrong and wrong->correct count the
flips that changed the item's score. Names: engine/metric_names.py (lm_eval_metric, LM_EVAL_KINDS).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .. import metric_names as M
from ..config.settings import LmEvalSpec
from .lm_eval_tasks import build_tasks


@dataclass
class TaskScore:
    """One model's result on one task: aggregates and per-item answers (cacheable)."""

    task: str
    doc_ids: list[int]
    choices: list[int]  # the chosen answer per item (argmax of lm-eval's log-likelihoods)
    correct: list[bool]  # lm-eval's `acc` per item
    aggregates: dict[str, float | None] = field(default_factory=dict)  # acc, acc_stderr, acc_norm, ...

    def to_state(self) -> dict[str, Any]:
        return {"task": self.task, "doc_ids": self.doc_ids, "choices": self.choices, "correct": self.correct,
                "aggregates": self.aggregates}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "TaskScore":
        return cls(state["task"], list(state["doc_ids"]), list(state["choices"]), list(state["correct"]),
                   dict(state["aggregates"]))


def _number(value: Any) -> float | None:
    """lm-eval writes "N/A" for a standard error it could not compute."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def _argmax(values: list[float]) -> int:
    """The first index of the largest value, as numpy's argmax (what lm-eval's acc uses)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


def _task_score(task: str, results: dict[str, Any], samples: list[dict[str, Any]]) -> TaskScore:
    samples = sorted(samples, key=lambda s: int(s["doc_id"]))
    aggregates = {}
    for metric, stderr in M.LM_EVAL_ACCURACIES:  # lm-eval's result keys: "acc,none", "acc_stderr,none"
        if f"{metric},none" in results:
            aggregates[metric] = _number(results[f"{metric},none"])
            aggregates[stderr] = _number(results.get(f"{stderr},none"))
    return TaskScore(task, [int(s["doc_id"]) for s in samples],
                     [_argmax([float(r[0]) for r in s["filtered_resps"]]) for s in samples],
                     [bool(s["acc"]) for s in samples], aggregates)


def score(model, tokenizer, spec: LmEvalSpec, tasks: dict[str, Any] | None = None) -> dict[str, TaskScore]:
    """Every configured task scored on `model` (tasks: from build_tasks, to share them between models)."""
    import logging

    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM

    from ..errors import ConfigError

    tasks = tasks if tasks is not None else build_tasks(spec)
    for name, task in tasks.items():
        if task.OUTPUT_TYPE != "multiple_choice":
            raise ConfigError(f"eval.lm_eval.tasks: {name} is a {task.OUTPUT_TYPE} task; accuracy and flips are "
                              f"measured on multiple-choice tasks only")
    # lm-eval's INFO lines (one per request type) would bury the run's own; its model wrapper warns
    # that it was handed a model object rather than a name, which is the point here
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    logging.getLogger("lm_eval.models.huggingface").setLevel(logging.ERROR)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=spec.batch_size)
    out = evaluate(lm=lm, task_dict=tasks, limit=spec.limit, log_samples=True, bootstrap_iters=100,
                   verbosity="WARNING")
    return {name: _task_score(name, out["results"][name], out["samples"][name]) for name in tasks}


def _share(n: int, total: int) -> float:
    return n / total if total else 0.0


def variant_metrics(base: dict[str, TaskScore], variant: dict[str, TaskScore]) -> dict[str, Any]:
    """Flat metrics (engine/metric_names.py) of the variant against the baseline, per task and pooled."""
    metrics: dict[str, Any] = {}
    pooled = {"items": 0, "flips": 0, "to_wrong": 0, "to_right": 0}
    rates: dict[str, float] = {}
    for task, v in variant.items():
        b = base[task]
        if b.doc_ids != v.doc_ids:
            raise ValueError(f"lm-eval {task}: the variant scored other items than the baseline")
        counts = {"items": len(v.doc_ids), "flips": sum(x != y for x, y in zip(b.choices, v.choices)),
                  "to_wrong": sum(bc and not vc for bc, vc in zip(b.correct, v.correct)),
                  "to_right": sum(vc and not bc for bc, vc in zip(b.correct, v.correct))}
        n = counts["items"]
        m = {M.ITEMS: n, M.FLIP_RATE: _share(counts["flips"], n),
             M.FLIPS_CORRECT_TO_WRONG: _share(counts["to_wrong"], n),
             M.FLIPS_WRONG_TO_CORRECT: _share(counts["to_right"], n)}
        for metric, stderr in M.LM_EVAL_ACCURACIES:
            if metric in v.aggregates:
                m[metric], m[stderr] = v.aggregates[metric], v.aggregates.get(stderr)
                m[M.baseline_of(metric)] = b.aggregates.get(metric)
                m[M.baseline_of(stderr)] = b.aggregates.get(stderr)
                if m[metric] is not None and m[M.baseline_of(metric)] is not None:
                    m[M.delta_of(metric)] = m[metric] - m[M.baseline_of(metric)]
        metrics.update({M.lm_eval_metric(task, k): value for k, value in m.items() if value is not None})
        rates[task] = m[M.FLIP_RATE]
        pooled = {k: pooled[k] + counts[k] for k in pooled}
    if rates:
        total = pooled["items"]
        metrics.update({M.LM_EVAL_ITEMS: total, M.LM_EVAL_FLIP_RATE: _share(pooled["flips"], total),
                        M.LM_EVAL_CORRECT_TO_WRONG: _share(pooled["to_wrong"], total),
                        M.LM_EVAL_WRONG_TO_CORRECT: _share(pooled["to_right"], total),
                        M.LM_EVAL_WORST_TASK: max(rates, key=rates.get)})
    return metrics
