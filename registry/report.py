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
from .compare import legend, markdown_table, matrix_row, render_markdown, shipped_targets
from .db import RegistryError, open_registry
from .models import Variant
from .queries import list_variants, model_names
from .recorder import registry_url
from .tracking import MlflowRun, tracking_uri


def _families(variants: list[Variant]) -> list[str]:
    found: dict[str, None] = {}
    for v in variants:
        for k in (v.metrics or {}):
            parts = k.split(".")
            if parts[0] == "task" and len(parts) == 3:
                found[parts[1]] = None
    return list(found)


def _task_table(variants: list[Variant], families: list[str]) -> str:
    header = ["variant", "recipe"] + [f"{f}: match / prefix / loglik delta" for f in families]
    rows = []
    for v in variants:
        m = v.metrics or {}
        cells = [v.id, v.recipe_name]
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
        rows.append(cells)
    return markdown_table(header, rows)


def _absolute_table(variants: list[Variant]) -> str:
    header = ["variant", "recipe", "ppl (baseline)", "weights (baseline)", "peak memory (baseline)",
              "prefill tok/s (baseline)", "decode ms/token (baseline)", "device", "runs"]
    rows = []
    for v in variants:
        m = v.metrics or {}

        def pair(key: str, fmt) -> str:
            if key not in m:
                return "-"
            return f"{fmt(m[key])} ({fmt(m[M.baseline_of(key)])})"

        rows.append([v.id, v.recipe_name, pair(M.PPL, lambda x: f"{x:.3f}"), pair(M.WEIGHT_BYTES, human_bytes),
                     pair(M.PEAK_MEMORY_BYTES, human_bytes), pair(M.PREFILL_TOKENS_PER_S, lambda x: f"{x:,.0f}"),
                     pair(M.DECODE_MS_PER_TOKEN, lambda x: f"{x:.1f}"), str(m.get(M.SPEED_DEVICE, v.device or "-")),
                     str(v.runs_count)])
    return markdown_table(header, rows)


def write_report(settings: Settings, model: str, out: Path | None = None) -> dict[str, Any]:
    """Write the report; log it to MLflow when tracking is on. Returns where it went."""
    engine = open_registry(registry_url(settings))
    variants = list_variants(engine, model, measured_only=True)
    if not variants:
        known = model_names(engine)
        raise RegistryError(f"report {model!r}: no measured variants of this model in the registry "
                            f"(models with variants: {', '.join(known) or 'none'}); run `qrecipe run model=...` first")
    out = out or Path(settings.paths.root).resolve() / "reports" / f"{model}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    targets = shipped_targets()
    rows = [matrix_row(v, targets) for v in variants]
    families = _families(variants)
    points = [plots.point(f"{v.recipe_name}@{v.target}", v.metrics or {}) for v in variants]
    baseline_bytes = next(((v.metrics or {}).get(M.WEIGHT_BYTES_BASELINE) for v in variants), None)
    pngs = [plots.quality_vs_memory(points, baseline_bytes, out / "quality_vs_memory.png",
                                    f"{model}: quality vs weight memory")]
    if families:
        pngs.append(plots.task_families([{"label": f"{v.recipe_name}@{v.target}", "metrics": v.metrics or {}}
                                         for v in variants], families, out / "task_families.png",
                                        f"{model}: behaviour by task family"))
    md = [f"# {model}: quantized variants", "",
          f"{len(variants)} measured variants, from the registry at "
          f"{engine.url.render_as_string(hide_password=True)}. Each row is the variant's latest successful run; "
          f"quality is measured against the unquantized baseline on the same tokens, speed against the baseline "
          f"timed in the same process.", "",
          "## Decision matrix", "", render_markdown(rows), "", "```", legend(), "```", "",
          "## Behaviour by task family", "",
          "greedy match: share of prompts whose greedy continuation equals the baseline's; prefix: mean share "
          "before the first differing token; loglik delta: reference answer log-likelihood per token, variant minus "
          "baseline (nats).", "", _task_table(variants, families) if families else "(no task metrics)", "",
          "## Absolute numbers", "", _absolute_table(variants), "", "## Plots", ""]
    md += [f"![{p.stem}]({p.name})" for p in pngs]
    report = out / "report.md"
    report.write_text("\n".join(md) + "\n")
    result: dict[str, Any] = {"report": str(report), "plots": [str(p) for p in pngs], "mlflow_run_id": None}
    if settings.tracking.enabled:
        run = MlflowRun(settings, model, f"report {time.strftime('%Y-%m-%d %H:%M')}",
                        {"qrecipe.kind": "report", "qrecipe.variants": ",".join(v.id for v in variants)})
        try:
            for path in [report, *pngs]:
                run.log_artifact(path, "report")
        except BaseException:
            run.end("FAILED")
            raise
        run.end("FINISHED")
        result.update({"mlflow_run_id": run.run_id, "tracking_uri": tracking_uri(settings)})
    return result
