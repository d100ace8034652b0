"""`qrecipe report MODEL`: the decision matrix of a model's variants as Markdown with PNG plots,
written under paths.root/reports/ and logged to MLflow as a run of the model's experiment."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from qrecipe.engine import metric_names as M
from qrecipe.engine.config.settings import Settings
from qrecipe.engine.tables import human_bytes

from . import plots
from .compare import legend, markdown_table, render, shipped_targets
from .db import RegistryError, open_registry, registry_url
from .protocols import Measured, choose_runs
from .queries import list_variants, model_names
from .tracking import MlflowRun, tracking_uri


def _families(rows: list[Measured]) -> list[str]:
    found: dict[str, None] = {}
    for r in rows:
        for k in r.metrics:
            parts = k.split(".")
            if parts[0] == "task" and len(parts) == 3:
                found[parts[1]] = None
    return list(found)


def _task_table(rows: list[Measured], families: list[str]) -> str:
    header = ["variant", "recipe"] + [f"{f}: match / prefix / loglik delta" for f in families]
    table = []
    for r in rows:
        m = r.metrics
        cells = [r.variant.id, r.variant.recipe_name]
        for f in families:
            if M.task_metric(f, M.GREEDY_MATCH) not in m:
                cells.append("-")
                continue
            cell = (f"{m[M.task_metric(f, M.GREEDY_MATCH)]:.2f} / {m[M.task_metric(f, M.PREFIX_MATCH)]:.2f} / "
                    f"{m[M.task_metric(f, M.LOGLIK_DELTA)]:+.3f}")
            if M.task_metric(f, M.VALID_RATE) in m:
                cell += (f" (valid {m[M.task_metric(f, M.VALID_RATE)]:.2f} vs "
                         f"{m[M.task_metric(f, M.VALID_RATE_BASELINE)]:.2f})")
            cells.append(cell)
        table.append(cells)
    return markdown_table(header, table)


def _lm_eval_cell(m: dict[str, Any], task: str) -> str:
    def get(kind: str):
        return m.get(M.lm_eval_metric(task, kind))

    if get(M.ITEMS) is None:
        return "-"
    parts = []
    for metric, stderr in M.LM_EVAL_ACCURACIES:
        if get(metric) is None:
            continue
        err, base, base_err = get(stderr), get(M.baseline_of(metric)), get(M.baseline_of(stderr))
        parts.append(f"{metric} {get(metric):.3f}" + (f" ±{err:.3f}" if err is not None else "")
                     + f" ({base:.3f}" + (f" ±{base_err:.3f}" if base_err is not None else "") + ")")
    parts.append(f"flips {100 * get(M.FLIP_RATE):.1f}% (right->wrong {100 * get(M.FLIPS_CORRECT_TO_WRONG):.1f}%, "
                 f"wrong->right {100 * get(M.FLIPS_WRONG_TO_CORRECT):.1f}%) of {get(M.ITEMS)}")
    return "; ".join(parts)


def _lm_eval_table(rows: list[Measured]) -> str:
    """Per lm-eval task: the variant's accuracies (the baseline's in brackets) with lm-eval's
    standard errors, and flips; then all tasks' items pooled."""
    tasks = list(dict.fromkeys(t for r in rows for t in M.lm_eval_tasks(r.metrics)))
    if not tasks:
        return "(not measured: eval.lm_eval.tasks)"
    table = []
    for r in rows:
        m = r.metrics
        pooled = m.get(M.LM_EVAL_FLIP_RATE)
        table.append([r.variant.id, r.variant.recipe_name, *[_lm_eval_cell(m, t) for t in tasks],
                      "-" if pooled is None else f"{100 * pooled:.1f}% of {m[M.LM_EVAL_ITEMS]}"])
    return markdown_table(["variant", "recipe", *tasks, "all tasks: flips"], table)


def _absolute_table(rows: list[Measured]) -> str:
    """Measured figures beside their baselines and the roofline's predictions; where the speed
    was measured on the target's own GPU, measured over predicted (the model's error)."""
    header = ["variant", "recipe", "run", "ppl (baseline)", "weights (baseline)", "peak memory (baseline)",
              "prefill tok/s (baseline)", "decode ms/token (baseline)", "measured on", "predicted prefill tok/s",
              "predicted decode ms/token", "measured / predicted (decode, prefill)"]
    table = []
    for r in rows:
        m = r.metrics

        def pair(key: str, fmt) -> str:
            if key not in m:
                return "-"
            return f"{fmt(m[key])} ({fmt(m[M.baseline_of(key)])})"

        pred = (f"{m[M.DECODE_MEASURED_OVER_PREDICTED]:.2f}, "
                f"{m[M.PREFILL_MEASURED_OVER_PREDICTED]:.2f}" if M.DECODE_MEASURED_OVER_PREDICTED in m and
                M.PREFILL_MEASURED_OVER_PREDICTED in m else
                f"{m[M.DECODE_MEASURED_OVER_PREDICTED]:.2f}, -" if M.DECODE_MEASURED_OVER_PREDICTED in m else
                "- (not measured on the target's GPU)" if M.PREDICTED_FOR in m else "-")
        on = "-"
        if M.SPEED_DEVICE_NAME in m:
            on = f"{m[M.SPEED_DEVICE_NAME]}, {m.get('speed_timing', '?')}" + \
                ("" if m.get(M.SPEED_PRODUCTION) else " (not the production kernel)")
        table.append([r.variant.id, r.variant.recipe_name, f"#{r.run.run_number}", pair(M.PPL, lambda x: f"{x:.3f}"),
                      pair(M.WEIGHT_BYTES, human_bytes), pair(M.PEAK_MEMORY_BYTES, human_bytes),
                      pair(M.PREFILL_TOKENS_PER_S, lambda x: f"{x:,.0f}"),
                      pair(M.DECODE_MS_PER_TOKEN, lambda x: f"{x:.3g}"), on,
                      pair(M.PREDICTED_PREFILL_TOKENS_PER_S, lambda x: f"{x:,.0f}"),
                      pair(M.PREDICTED_DECODE_MS_PER_TOKEN, lambda x: f"{x:.3g}"), pred])
    return markdown_table(header, table)


def _plots(model: str, rows: list[Measured], out: Path, suffix: str) -> list[Path]:
    points = [plots.point(f"{r.variant.recipe_name}@{r.variant.target} {r.variant.id[:6]}", r.metrics) for r in rows]
    baseline_bytes = next((r.metrics.get(M.WEIGHT_BYTES_BASELINE) for r in rows), None)
    pngs = [plots.quality_vs_memory(points, baseline_bytes, out / f"quality_vs_memory{suffix}.png",
                                    f"{model}: quality vs weight memory")]
    families = _families(rows)
    if families:
        pngs.append(plots.task_families([{"label": f"{r.variant.recipe_name}@{r.variant.target} {r.variant.id[:6]}",
                                          "metrics": r.metrics} for r in rows], families,
                                        out / f"task_families{suffix}.png", f"{model}: behaviour by task family"))
    return pngs


def write_report(settings: Settings, model: str, out: Path | None = None, *, protocol: str | None = None,
                 any_protocol: bool = False) -> dict[str, Any]:
    """Write the report (variants' runs under one eval protocol, or under each of theirs with
    any_protocol, one section per protocol); log it to MLflow when tracking is on."""
    engine = open_registry(registry_url(settings), create=False)
    variants = list_variants(engine, model, measured_only=True)
    if not variants:
        known = model_names(engine)
        raise RegistryError(f"report {model!r}: no measured variants of this model in the registry "
                            f"(models with variants: {', '.join(known) or 'none'}); run `qrecipe run model=...` first")
    selection = choose_runs(engine, settings, variants, protocol=protocol, any_protocol=any_protocol,
                            what=f"report {model}")
    if not selection.rows:
        raise RegistryError(f"report {model!r}: no variant of it has a successful run under eval protocol "
                            f"{selection.protocol}: " + "; ".join(selection.missing_lines())
                            + "; pass --protocol HASH or --any-protocol")
    out = out or Path(settings.paths.root).resolve() / "reports" / f"{model}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    targets = shipped_targets()
    groups = selection.by_protocol()
    md = [f"# {model}: quantized variants", "",
          f"{len(selection.rows)} measured variants, from the registry at "
          f"{engine.url.render_as_string(hide_password=True)}. Each row is the variant's latest successful run under "
          f"the eval protocol its section names; quality is measured against the unquantized baseline on the same "
          f"tokens, speed against the baseline timed interleaved in the same process (with the interquartile range "
          f"of the paired ratios), predictions are the target's roofline.", "",
          "## Decision matrix", "", render(selection, targets, markdown=True), "", "```", legend(), "```", ""]
    pngs: list[Path] = []
    for protocol_hash_, rows in groups.items():
        suffix = f"-{protocol_hash_}" if len(groups) > 1 else ""
        families = _families(rows)
        heading = f" ({selection.describe(protocol_hash_)})" if len(groups) > 1 else ""
        md += [f"## Behaviour by task family{heading}", "",
               "greedy match: share of prompts whose greedy continuation equals the baseline's; prefix: mean share "
               "before the first differing token; loglik delta: reference answer log-likelihood per token, variant "
               "minus baseline (nats).", "", _task_table(rows, families) if families else "(no task metrics)", "",
               f"## lm-evaluation-harness{heading}", "",
               "Zero-shot accuracy of the variant (the baseline's in brackets) with lm-eval's standard error; flips: "
               "share of items whose chosen answer differs from the baseline's, and the two directions that change "
               "the score.", "", _lm_eval_table(rows), "",
               f"## Absolute numbers{heading}", "", _absolute_table(rows), ""]
        pngs += _plots(model, rows, out, suffix)
    md += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in pngs]
    report = out / "report.md"
    report.write_text("\n".join(md) + "\n")
    result: dict[str, Any] = {"report": str(report), "plots": [str(p) for p in pngs], "mlflow_run_id": None}
    if settings.tracking.enabled:
        run = MlflowRun(settings, model, f"report {time.strftime('%Y-%m-%d %H:%M:%S')}",
                        {"qrecipe.kind": "report", "qrecipe.variants": ",".join(r.variant.id for r in selection.rows),
                         "qrecipe.eval_protocols": ",".join(groups)})
        try:
            for path in [report, *pngs]:
                run.log_artifact(path, "report")
        except BaseException:
            run.end("FAILED")
            raise
        run.end("FINISHED")
        result.update({"mlflow_run_id": run.run_id, "tracking_uri": tracking_uri(settings)})
    return result
