"""The PNG plots logged with runs and reports (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qrecipe.engine import metric_names as M

MIB = 2**20


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def point(label: str, metrics: dict[str, Any], highlight: bool = False) -> dict[str, Any]:
    """One variant on the quality-vs-memory plot, from its metrics."""
    return {"label": label, M.WEIGHT_BYTES: metrics.get(M.WEIGHT_BYTES), M.PPL_DELTA_PCT: metrics.get(M.PPL_DELTA_PCT),
            M.KL_MEAN: metrics.get(M.KL_MEAN), "highlight": highlight}


def quality_vs_memory(points: list[dict[str, Any]], baseline_bytes: int | None, path: Path, title: str) -> Path:
    """Perplexity change and KL against weight memory, one point per variant.

    points: {label, weight_bytes, ppl_delta_pct, kl_mean, highlight}; the baseline sits at
    (baseline_bytes, 0) on both axes.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, ylabel in ((axes[0], M.PPL_DELTA_PCT, "perplexity change vs baseline (%)"),
                            (axes[1], M.KL_MEAN, "mean KL(baseline || variant) (nats)")):
        for p in points:
            if p.get(key) is None or p.get(M.WEIGHT_BYTES) is None:
                continue
            ax.scatter(p[M.WEIGHT_BYTES] / MIB, p[key], s=60 if p.get("highlight") else 30,
                       color="tab:red" if p.get("highlight") else "tab:blue", zorder=3)
            ax.annotate(p["label"], (p[M.WEIGHT_BYTES] / MIB, p[key]), fontsize=7, xytext=(4, 3),
                        textcoords="offset points")
        if baseline_bytes:
            ax.scatter(baseline_bytes / MIB, 0, marker="*", s=120, color="black", zorder=3)
            ax.annotate("baseline", (baseline_bytes / MIB, 0), fontsize=7, xytext=(4, 3), textcoords="offset points")
        ax.set_xlabel("weight memory (MiB)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return _save(plt, fig, path)


def layer_error(errors: list[dict[str, Any]], path: Path, title: str) -> Path:
    """SQNR (dB) of every quantized layer in model order, coloured by scheme."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(8, min(24, len(errors) * 0.08)), 4))
    schemes = sorted({e["scheme"] for e in errors})
    colors = {s: plt.cm.tab10(i) for i, s in enumerate(schemes)}
    xs = range(len(errors))
    ax.bar(xs, [e["sqnr_db"] or 0 for e in errors], color=[colors[e["scheme"]] for e in errors], width=1.0)
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=colors[s], label=s) for s in schemes], fontsize=8)
    ax.set_xlabel("quantized layer (model order)")
    ax.set_ylabel("weight SQNR (dB, higher is better)")
    ax.set_title(title)
    if len(errors) <= 40:
        ax.set_xticks(list(xs), [e["name"] for e in errors], rotation=90, fontsize=6)
    return _save(plt, fig, path)


def task_families(rows: list[dict[str, Any]], families: list[str], path: Path, title: str) -> Path:
    """Greedy-match share per task family, one bar group per family, one bar per variant."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, len(families) * 1.8), 4))
    width = 0.8 / max(1, len(rows))
    for i, row in enumerate(rows):
        values = [row["metrics"].get(M.task_metric(f, M.GREEDY_MATCH)) or 0 for f in families]
        ax.bar([j + i * width for j in range(len(families))], values, width=width, label=row["label"])
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(families))], families)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("greedy continuation equal to the baseline's (share)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return _save(plt, fig, path)


def pareto_front(points: list[dict[str, Any]], path: Path, title: str) -> Path:
    """The plans a search measured: weight memory against measured KL and against the perplexity
    change on the eval text; the Pareto front of each joined by a line, the found recipe in red,
    the predicted KL as open circles.

    points: {label, weight_bytes, measured: {kl_mean, ppl_delta_pct}, predicted: {kl_mean?},
    chosen, pareto_kl, pareto_ppl}."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, front_key, ylabel in ((axes[0], M.KL_MEAN, "pareto_kl", "mean KL(baseline || variant) (nats)"),
                                       (axes[1], M.PPL_DELTA_PCT, "pareto_ppl", "perplexity change vs baseline (%)")):
        shown = [p for p in points if (p.get("measured") or {}).get(key) is not None]
        front = sorted((p for p in shown if p.get(front_key)), key=lambda p: p["weight_bytes"])
        if front:
            ax.plot([p["weight_bytes"] / MIB for p in front], [p["measured"][key] for p in front], color="tab:green",
                    alpha=0.6, zorder=2, label="Pareto front (measured)")
        for p in shown:
            x, y = p["weight_bytes"] / MIB, p["measured"][key]
            ax.scatter(x, y, s=60 if p.get("chosen") else 30, color="tab:red" if p.get("chosen") else "tab:blue",
                       zorder=3)
            ax.annotate(p["label"], (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
            predicted = (p.get("predicted") or {}).get(key)
            if key == M.KL_MEAN and predicted is not None:
                ax.scatter(x, predicted, s=30, facecolors="none", edgecolors="gray", zorder=3)
        if key == M.KL_MEAN:
            ax.scatter([], [], s=30, facecolors="none", edgecolors="gray", label="predicted (calibration slice)")
        ax.set_xlabel("weight memory (MiB)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return _save(plt, fig, path)
