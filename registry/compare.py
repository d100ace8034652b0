"""The decision matrix: for each variant, what it saves, what it costs, and where it can serve.
Each table holds variants measured under one eval protocol (registry/protocols.py).

    memory      weight memory reduction vs the baseline (x)
    decode      measured decode speedup (baseline ms/token / variant ms/token, timed interleaved
                in one process on one device): the median over repeats of the paired ratio, its
                interquartile range in brackets; `noisy` when that range includes 1.0 or the
                baseline's or the variant's repeats spread more than eval.speed.max_rel_iqr
    prefill     measured prefill speedup (variant tokens/s / baseline tokens/s), the same way
    measured on the device that timed them; `(fallback)` when quantized layers ran no kernel of
                their format there (e.g. dequantize-then-matmul on a CPU), `(emulated)` likewise
    predicted   the target's roofline: decode / prefill speedup from its data-sheet bandwidth and
                dense throughput (engine/plan/roofline.py), a prediction, not a measurement
    meas/pred   where the speed was measured on the target's own GPU: measured over predicted
                decode / prefill throughput of the variant (1.0 = at the roofline)
    ppl         perplexity change on the primary eval text (%)
    KL          mean KL(baseline || variant) per token (top-k support, see README)
    agree       top-1 agreement with the baseline
    worst task  the task family whose greedy continuations least often equal the baseline's
    flips       lm-eval: share of items whose chosen answer differs from the baseline's, all
                tasks pooled, and the task with the most (eval.lm_eval; '-' when not measured)
    serves on   the shipped targets (conf/target) whose capabilities run every scheme natively
                and whose memory holds the weights
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from qrecipe.engine import metric_names as M
from qrecipe.engine.tables import text_table
from qrecipe.engine.targets import Target, parse_target

from .protocols import Measured, Selection

def shipped_targets() -> list[Target]:
    from qrecipe.engine.config.compose import conf_dir

    folder = conf_dir() / "target"
    return [parse_target(OmegaConf.to_container(OmegaConf.load(p))) for p in sorted(folder.glob("*.yaml"))
            if p.stem != "auto"]


def serves_on(requires: list[str], weight_bytes: float | None, targets: list[Target]) -> list[str]:
    out = []
    for t in targets:
        room = t.memory_gib * 2**30 * t.memory_utilization * max(1, t.max_devices)
        if not t.lacks(tuple(requires)) and (weight_bytes is None or weight_bytes <= room):
            out.append(t.name)
    return out


def matrix_row(row: Measured, targets: list[Target]) -> dict[str, Any]:
    """One variant's figures, from the run `row` chose (registry/protocols.py)."""
    variant, m = row.variant, row.metrics
    out: dict[str, Any] = {
        "variant": variant.id, "model": variant.base_model.name, "recipe": variant.recipe_name,
        "target": variant.target, "run_number": row.run.run_number, M.EVAL_PROTOCOL: row.protocol,
        "serves_on": serves_on(variant.requires or [], m.get(M.WEIGHT_BYTES), targets),
        "scheme_mix": variant.scheme_mix, "status": variant.status, "runs": variant.runs_count,
        "worst_family": m.get(M.TASK_WORST_FAMILY), "worst_family_match": m.get(M.TASK_WORST_GREEDY_MATCH),
    }
    out.update({k: m.get(k) for k in MATRIX_METRICS})
    return out


# The run metrics a row carries (names as in metrics.json; README "Tracking and registry").
MATRIX_METRICS = (
    M.WEIGHT_REDUCTION, M.PPL_DELTA_PCT, M.KL_MEAN, M.TOP1_AGREEMENT,
    M.DECODE_SPEEDUP, M.DECODE_SPEEDUP_LOW, M.DECODE_SPEEDUP_HIGH, M.DECODE_NOISY, M.DECODE_NOISE,
    M.PREFILL_SPEEDUP, M.PREFILL_SPEEDUP_LOW, M.PREFILL_SPEEDUP_HIGH, M.PREFILL_NOISY, M.PREFILL_NOISE,
    M.SPEED_DEVICE_NAME, M.SPEED_TIMING, M.SPEED_PRODUCTION, M.SPEED_CAVEAT, M.LAYERS_ON_FALLBACK, M.LAYERS_EMULATED,
    M.PREDICTED_FOR, M.PREDICTED_DECODE_SPEEDUP, M.PREDICTED_PREFILL_SPEEDUP,
    M.DECODE_MEASURED_OVER_PREDICTED, M.PREFILL_MEASURED_OVER_PREDICTED, M.LM_EVAL_FLIP_RATE, M.LM_EVAL_WORST_TASK,
)


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def speedup_cell(row: dict[str, Any], side: str) -> str:
    """e.g. `0.49x (0.47-0.52)` or `1.02x (0.95-1.10) noisy`."""
    if row.get(f"{side}_speedup") is None:
        return "-"
    cell = f"{row[f'{side}_speedup']:.2f}x"
    if row.get(f"{side}_speedup_low") is not None:
        cell += f" ({row[f'{side}_speedup_low']:.2f}-{row[f'{side}_speedup_high']:.2f})"
    return cell + (" noisy" if row.get(f"{side}_noisy") else "")


def measured_on(row: dict[str, Any]) -> str:
    if row.get(M.SPEED_DEVICE_NAME) is None:
        return "-"
    how = [k for k, key in (("fallback", M.LAYERS_ON_FALLBACK), ("emulated", M.LAYERS_EMULATED)) if row.get(key)]
    return row[M.SPEED_DEVICE_NAME] + (f" ({', '.join(how)})" if how else "")


def _pair(row: dict[str, Any], decode: str, prefill: str, spec: str, suffix: str = "") -> str:
    if row.get(decode) is None:
        return "-"
    return f"{row[decode]:{spec}}{suffix} / {_fmt(row.get(prefill), spec, suffix)}"


def _cells(row: dict[str, Any]) -> list[str]:
    worst = "-" if row["worst_family"] is None else f"{row['worst_family']} {row['worst_family_match']:.2f}"
    flips = row.get(M.LM_EVAL_FLIP_RATE)
    flips = "-" if flips is None else f"{100 * flips:.1f}% ({row[M.LM_EVAL_WORST_TASK]})"
    predicted = _pair(row, M.PREDICTED_DECODE_SPEEDUP, M.PREDICTED_PREFILL_SPEEDUP, ".2f", "x")
    if predicted != "-":
        predicted += f" on {row['predicted_for']}"
    return [row["variant"], row["recipe"], row["target"], _fmt(row[M.WEIGHT_REDUCTION], ".2f", "x"),
            speedup_cell(row, "decode"), speedup_cell(row, "prefill"), measured_on(row), predicted,
            _pair(row, M.DECODE_MEASURED_OVER_PREDICTED, M.PREFILL_MEASURED_OVER_PREDICTED, ".2f"),
            _fmt(row[M.PPL_DELTA_PCT], "+.2f", "%"), _fmt(row[M.KL_MEAN], ".4f"),
            _fmt(None if row[M.TOP1_AGREEMENT] is None else 100 * row[M.TOP1_AGREEMENT], ".1f", "%"), worst, flips,
            ", ".join(row["serves_on"]) or "-"]


COLUMNS = ["variant", "recipe", "target", "memory", "decode", "prefill", "measured on", "predicted (decode / prefill)",
           "meas/pred", "ppl", "KL", "agree", "worst task", "flips", "serves on"]


def render_text(rows: list[dict[str, Any]]) -> str:
    return text_table(COLUMNS, [_cells(r) for r in rows])


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header)] + [line(r) for r in rows])


def render_markdown(rows: list[dict[str, Any]]) -> str:
    return markdown_table(COLUMNS, [_cells(r) for r in rows])


def notes(rows: list[dict[str, Any]]) -> list[str]:
    """What the table cannot show in a cell: why a speed is noisy or not the production kernel's."""
    out = []
    for r in rows:
        for side in ("decode", "prefill"):
            if r.get(f"{side}_noise"):
                out.append(f"{r['variant']} {side} is noisy: {r[f'{side}_noise']}")
        if r.get(M.SPEED_CAVEAT):
            out.append(f"{r['variant']}: {r['speed_caveat']}")
        if r.get(M.SPEED_TIMING) == "sequential":
            out.append(f"{r['variant']}: baseline and variant were timed sequentially, not interleaved")
    return out


def render(selection: Selection, targets: list[Target], markdown: bool = False) -> str:
    """The matrix of a selection: one table per eval protocol, each under a line naming it, a
    plain statement when there is more than one, then the notes and the variants left out."""
    table = render_markdown if markdown else render_text
    groups = selection.by_protocol()
    parts = []
    if len(groups) > 1:
        parts.append(f"These variants were measured under {len(groups)} different eval protocols, so they are in "
                     f"{len(groups)} tables: compare figures only within one table.")
    for protocol, measured in groups.items():
        rows = [matrix_row(m, targets) for m in measured]
        parts += [selection.describe(protocol), table(rows)]
        parts += [f"- {n}" if markdown else f"  note: {n}" for n in notes(rows)]
        parts.append("")
    if selection.missing:
        parts.append("Not in the table (no successful run under the requested eval protocol; pass --protocol HASH "
                     "or --any-protocol to see them):")
        parts += [f"- {line}" if markdown else f"  {line}" for line in selection.missing_lines()]
    return "\n".join(parts).rstrip()


def legend() -> str:
    """The column meanings, from this module's docstring."""
    import textwrap

    return textwrap.dedent((__doc__ or "").split("\n\n", 1)[1]).strip()

