"""The decision matrix: for each variant, what it saves, what it costs, and where it can serve.

    memory      weight memory reduction vs the baseline (x)
    decode      decode speedup (baseline ms/token / variant ms/token, same process and device)
    prefill     prefill speedup (variant tokens/s / baseline tokens/s)
    ppl         perplexity change on the primary eval text (%)
    KL          mean KL(baseline || variant) per token (top-k support, see README)
    agree       top-1 agreement with the baseline
    worst task  the task family whose greedy continuations least often equal the baseline's
    serves on   the shipped targets (conf/target) whose capabilities run every scheme natively
                and whose memory holds the weights
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from qrecipe.engine import metric_names as M
from qrecipe.engine.tables import text_table
from qrecipe.engine.targets import Target, parse_target

from .models import Variant

COLUMNS = ["variant", "recipe", "target", "memory", "decode", "prefill", "ppl", "KL", "agree", "worst task",
           "serves on"]


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


def matrix_row(variant: Variant, targets: list[Target]) -> dict[str, Any]:
    m = variant.metrics or {}
    return {
        "variant": variant.id, "model": variant.base_model.name, "recipe": variant.recipe_name,
        "target": variant.target, "weight_reduction": m.get(M.WEIGHT_REDUCTION),
        "decode_speedup": m.get(M.DECODE_SPEEDUP), "prefill_speedup": m.get(M.PREFILL_SPEEDUP),
        "ppl_delta_pct": m.get(M.PPL_DELTA_PCT), "kl_mean": m.get(M.KL_MEAN),
        "top1_agreement": m.get(M.TOP1_AGREEMENT), "worst_family": m.get(M.TASK_WORST_FAMILY),
        "worst_family_match": m.get(M.TASK_WORST_GREEDY_MATCH),
        "serves_on": serves_on(variant.requires or [], m.get(M.WEIGHT_BYTES), targets),
        "scheme_mix": variant.scheme_mix, "status": variant.status, "runs": variant.runs_count,
    }


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _cells(row: dict[str, Any]) -> list[str]:
    worst = "-" if row["worst_family"] is None else f"{row['worst_family']} {row['worst_family_match']:.2f}"
    return [row["variant"], row["recipe"], row["target"], _fmt(row["weight_reduction"], ".2f", "x"),
            _fmt(row["decode_speedup"], ".2f", "x"), _fmt(row["prefill_speedup"], ".2f", "x"),
            _fmt(row["ppl_delta_pct"], "+.2f", "%"), _fmt(row["kl_mean"], ".4f"),
            _fmt(None if row["top1_agreement"] is None else 100 * row["top1_agreement"], ".1f", "%"), worst,
            ", ".join(row["serves_on"]) or "-"]


def render_text(rows: list[dict[str, Any]]) -> str:
    return text_table(COLUMNS, [_cells(r) for r in rows])


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header)] + [line(r) for r in rows])


def render_markdown(rows: list[dict[str, Any]]) -> str:
    return markdown_table(COLUMNS, [_cells(r) for r in rows])


def legend() -> str:
    """The column meanings, from this module's docstring."""
    import textwrap

    return textwrap.dedent((__doc__ or "").split("\n\n", 1)[1]).strip()

