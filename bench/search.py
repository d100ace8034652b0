"""`qrecipe search` on SmolLM2-135M: found mixes against uniform recipes and llama.cpp's heuristic
mix of the same size, on text the search never saw; the proxy's rank correlation with the exact
sensitivities; and the wall time of a search against one calibrated quantization run.

    nice -n 10 .venv/bin/python bench/search.py [--budgets 4.25,4.5,5.0] [--eval-windows 32]
        [--exact-layers 0,4,...|all] [--natural] [--no-timing] [--out bench/search.json]

Sensitivities: measured on 8 windows x 256 tokens of C4 train (calib.seed 0): both proxies for
every unit and candidate below, the exact KL (each unit alone quantized) for the units of
--exact-layers (every one with `all`; then exact-sensitivity searches are measured too); cached
in the registry under bench/.cache/search (a rerun reuses them). Evaluation: `--eval-windows` windows of 512 tokens of
WikiText-2 test, scored like `qrecipe run` (KL over the baseline's top-64, perplexity), every
plan quantized from the same float model. Target h100 (bf16 serving dtype: a kept layer costs 16
bits). Results go to --out (resumed: plans already measured there are not measured again).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HOME = HERE / ".cache" / "search"
CANDIDATES = ["keep", "W8A16", "W4A16:g128", "W4A16:g64", "W4A16:g32", "W4A16:g64:asym", "W4A16:g32:asym",
              "W4A16:channel"]
# every uniform recipe of at most 5 bits per weight (W8A16, at 8, only with --natural)
UNIFORM = ["W4A16:channel", "W4A16:g64", "W4A16:g64:asym", "W4A16:g32", "W4A16:g32:asym"]
HEURISTIC = ROOT / "recipes" / "llamacpp-smollm2.yaml"


def common(args) -> list[str]:
    return ["target=h100", "eval.seq_len=512", f"eval.windows={args.eval_windows}", "eval.tasks.families=[]",
            "eval.speed.enabled=false", "eval.memory.method=off", "search.samples=8", "search.seq_len=256",
            "search.front_points=0", "search.run=false", "search.candidates=[" + ",".join(CANDIDATES) + "]"]


def settings_for(args, *extra: str):
    from qrecipe.engine.config import compose, load_settings
    from qrecipe.engine.search.spec import with_search_group

    return load_settings(compose(with_search_group([*common(args), *extra])))


def cache():
    from qrecipe.registry.db import default_url, open_registry
    from qrecipe.registry.sensitivity_cache import RegistrySensitivityCache

    return RegistrySensitivityCache(open_registry(default_url(HOME)))


def found(args, measure: str, bpw: float):
    """The search's allocation at bpw with exact or Fisher sensitivities (from the cache)."""
    from qrecipe.engine.search import find

    out = HOME / "recipes" / f"found-{measure}-{bpw:g}.yaml"
    out.unlink(missing_ok=True)
    s = settings_for(args, f"search.sensitivity={'exact' if measure == 'exact' else 'proxy'}",
                     f"search.budget.bits_per_weight={bpw}", f"search.output={out}")
    return s, find(s, cache())


def exact_on(settings, prepared, layers: set[int]) -> dict:
    """The exact KL of the units in `layers` (stored in the registry cache), and the Spearman rank
    correlation of each proxy with it over those (unit, candidate) pairs."""
    import dataclasses

    import torch
    from scipy.stats import spearmanr

    from qrecipe.engine.data import calibration_windows
    from qrecipe.engine.models.loading import load_model
    from qrecipe.engine.search.cache import EXACT_KL, FISHER, HESSIAN
    from qrecipe.engine.search.search import cache_scope
    from qrecipe.engine.search.sensitivity import measure

    c = cache()
    device, dtype = torch.device("cpu"), torch.float32
    scope = cache_scope(prepared, device, dtype)
    units = [u for u in prepared.units if u.block in layers]
    options = {u.name: [o.candidate for o in prepared.options[u.name]] for u in units}
    known = c.load(scope)
    pairs = [(u.name, cand.label) for u in units for cand in options[u.name] if not cand.keeps]
    if any((EXACT_KL, *pair) not in known for pair in pairs):
        model, tok = load_model(settings.model, Path(settings.paths.cache), device, dtype)
        windows = calibration_windows(tok, dataclasses.replace(settings.calib, samples=prepared.spec.samples,
                                                               seq_len=prepared.spec.seq_len))
        measure(model, windows, prepared.spec.batch_size, settings.eval.kl_topk, prepared.info.model_type, units,
                options, {EXACT_KL}, known, settings.calib.seed, lambda e: c.store(scope, e),
                lambda f, msg: print(f"[exact {100 * f:5.1f}%] {msg}", file=sys.stderr, flush=True))
        known = c.load(scope)
    def rho(proxy: str, among) -> float:
        return float(spearmanr([known[(EXACT_KL, *pair)] for pair in among],
                               [known[(proxy, *pair)] for pair in among]).statistic)

    labels = sorted({c for _, c in pairs})
    # over every pair, and per candidate across the units (the harder ranking: no easy W8-vs-W4 gaps)
    return {"exact_layers": sorted(layers), "exact_pairs": len(pairs),
            "spearman": {proxy: rho(proxy, pairs) for proxy in (FISHER, HESSIAN)},
            "spearman_per_candidate": {c: {"pairs": sum(1 for _, x in pairs if x == c),
                                           **{proxy: rho(proxy, [pr for pr in pairs if pr[1] == c])
                                              for proxy in (FISHER, HESSIAN)}} for c in labels}}


def use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's (llama-quant.cpp), integer division as in C."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def sized_heuristic(prepared, bpw: float) -> dict:
    """llama.cpp's mix scaled to a size: in its layers, bump down, then q/k/v (v's group), then o
    to W8A16, edge layers first, each bump taken only while the total stays within bpw."""
    from qrecipe.engine.search.candidates import parse_candidate

    base, high = parse_candidate("W4A16:g64", "h"), parse_candidate("W8A16", "h")
    n = prepared.info.num_layers
    by = {(u.kind_slug, u.block): u for u in prepared.units}
    nbytes = {u.name: {o.candidate: o.nbytes for o in prepared.options[u.name]} for u in prepared.units}
    assignment = {u.name: base for u in prepared.units}
    budget = bpw * prepared.numel / 8
    total = sum(nbytes[u][base] for u in assignment)
    heavy = sorted((i for i in range(n) if use_more_bits(i, n)), key=lambda i: (min(i, n - 1 - i), i))
    for kind in ("down", "qkv", "o"):
        for i in heavy:
            u = by[(kind, i)]
            extra = nbytes[u.name][high] - nbytes[u.name][base]
            if total + extra <= budget:
                assignment[u.name], total = high, total + extra
    return assignment


def reference_point(label: str, node: dict, settings, prepared):
    import torch

    from qrecipe.engine.search import Point
    from qrecipe.engine.search.accounting import bits_per_weight
    from qrecipe.engine.search.search import plan_of

    pt = Point(label, {}, 0, 0, 0.0, math.nan, node)
    plan = plan_of(settings, prepared.info, pt, torch.device("cpu"), torch.float32)
    pt.unit_bytes = sum(plan.layer(li.name).bytes_after for u in prepared.units for li in u.layers)
    pt.weight_bytes = pt.unit_bytes + prepared.fixed
    pt.bits_per_weight = bits_per_weight(pt.unit_bytes, prepared.numel)
    return pt


def timed(cmd: list[str], home: Path) -> dict:
    shutil.rmtree(home, ignore_errors=True)
    env = {**os.environ, "QRECIPE_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    start = time.monotonic()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - start
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
    return {"command": " ".join(cmd[1:]), "seconds": round(seconds, 1), "stdout_tail": p.stdout[-2500:]}


def timing(args) -> dict:
    """5. wall time: a proxy search end to end (its defaults: sensitivities, front, the found recipe
    run and measured) against one calibrated (GPTQ) run, each in a fresh home, same eval settings."""
    qrecipe = str(Path(sys.executable).with_name("qrecipe"))
    ev = ["target=h100", "eval.seq_len=512", f"eval.windows={args.eval_windows}", "eval.tasks.families=[]",
          "eval.speed.enabled=false", "eval.memory.method=off"]
    t = {"load_average_before": os.getloadavg(),
         "gptq_run": timed([qrecipe, "run", "--no-progress", "recipe=gptq", *ev], HOME.parent / "timing-gptq"),
         "proxy_search": timed([qrecipe, "search", "--no-progress", *ev, "search.budget.bits_per_weight=4.5"],
                               HOME.parent / "timing-search")}
    t["ratio"] = round(t["proxy_search"]["seconds"] / t["gptq_run"]["seconds"], 2)
    t["load_average_after"] = os.getloadavg()
    return t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budgets", default="4.25,4.5,5.0")
    ap.add_argument("--eval-windows", type=int, default=32)
    ap.add_argument("--exact-layers", default="0,4,8,12,16,20,24,28,29",
                    help="layers whose units get the exact KL (for the proxy's rank correlation), or all")
    ap.add_argument("--natural", action="store_true",
                    help="also measure llama.cpp's mix at its own size, a search at that size, and uniform W8A16")
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--only", default="", help="measure only the plans whose labels start with one of these "
                    "(comma-separated), e.g. to run two measuring processes into two --out files")
    ap.add_argument("--only-timing", action="store_true",
                    help="only the wall-time comparison (step 5), e.g. into another --out beside a --no-timing run")
    ap.add_argument("--out", default=str(HERE / "search.json"))
    args = ap.parse_args()
    os.environ["QRECIPE_HOME"] = str(HOME)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    results.setdefault("points", {})

    def save():
        out.write_text(json.dumps(results, indent=2, default=str))

    if args.only_timing:
        results["timing"] = timing(args)
        save()
        print(results["timing"])
        return 0

    from omegaconf import OmegaConf

    from qrecipe.engine.search import measure_points
    from qrecipe.engine.search.recipe_writer import build_recipe

    # 1. the proxies of every unit, the exact KL of some (cached in the registry for reruns)
    t0 = time.monotonic()
    s, r = found(args, "fisher", 4.5)
    prepared = r.prepared
    every = args.exact_layers == "all"
    layers = set(range(prepared.info.num_layers)) if every else {int(x) for x in args.exact_layers.split(",")}
    results["sensitivities"] = {"pairs": sum(1 for u in prepared.units for o in prepared.options[u.name]
                                             if not o.candidate.keeps),
                                "proxy_seconds_this_run": round(time.monotonic() - t0, 1)}
    t0 = time.monotonic()
    results["sensitivities"].update(exact_on(s, prepared, layers))
    results["sensitivities"]["exact_seconds_this_run"] = round(time.monotonic() - t0, 1)
    save()
    heuristic = OmegaConf.to_container(OmegaConf.load(HEURISTIC))
    natural = reference_point("llama.cpp heuristic (recipes/llamacpp-smollm2.yaml)", heuristic, s, prepared)
    budgets = [float(b) for b in args.budgets.split(",")]

    # 2. the plans to measure
    points = {}
    sizes = [*budgets, round(natural.bits_per_weight, 4)] if args.natural else budgets
    for bpw in sizes:
        for measure in (("exact", "fisher") if every else ("fisher",)):
            sb, rb = found(args, measure, bpw)
            rb.chosen.label = f"found {measure} @{bpw:g}"
            points[rb.chosen.label] = rb.chosen
    from qrecipe.engine.search.candidates import parse_candidate

    for text in UNIFORM + (["W8A16"] if args.natural else []):
        c = parse_candidate(text, "uniform")
        node = {"name": f"uniform-{c.slug}", "base": c.rule_fields(), "rules": {"all": {"match": "class:Linear"}}}
        points[f"uniform {c.label}"] = reference_point(f"uniform {c.label}", node, s, prepared)
    if args.natural:
        points[natural.label] = natural
    for bpw in budgets:
        mix = sized_heuristic(prepared, bpw)
        if len({c.label for c in mix.values()}) == 1:  # no W8A16 bump fits: it is uniform W4A16 g64
            continue
        node, _ = build_recipe(f"llamacpp-sized-{bpw:g}", prepared.units, mix, s.recipe, "llama.cpp's mix scaled to a size")
        label = f"llama.cpp heuristic sized @{bpw:g}"
        points[label] = reference_point(label, node, s, prepared)

    # 3. measure them on WikiText-2 test (resumable)
    for label, pt in points.items():
        if label in results["points"] or (args.only and not label.startswith(tuple(args.only.split(",")))):
            continue
        t = time.monotonic()
        measure_points(s, prepared, [pt])
        results["points"][label] = {"bits_per_weight": pt.bits_per_weight, "weight_bytes": pt.weight_bytes,
                                    "predicted_kl": None if math.isnan(pt.predicted) else pt.predicted,
                                    "mix": pt.mix(), "measured": pt.measured, "seconds": round(time.monotonic() - t, 1)}
        save()

    # 4. the comparison per budget
    P = results["points"]
    rows = []
    for bpw in sizes:
        uniform = [(k, v) for k, v in P.items() if k.startswith("uniform") and v["bits_per_weight"] <= bpw + 1e-9]
        best_u = min(uniform, key=lambda kv: kv[1]["measured"]["kl_mean"]) if uniform else None
        heur = f"llama.cpp heuristic sized @{bpw:g}"
        if bpw not in budgets:
            heur = natural.label
        elif heur not in P:  # nothing fit beside W4A16 g64
            heur = "uniform W4A16:g64"
        exact = f"found exact @{bpw:g}"
        rows.append({"budget": bpw, "found_exact": exact if exact in P else None,
                     "found_fisher": f"found fisher @{bpw:g}",
                     "best_uniform": best_u[0] if best_u else None, "heuristic": heur})
    results["comparisons"] = [r for r in rows if all(r[k] in P for k in ("found_fisher", "best_uniform", "heuristic")
                                                      if r[k])]
    save()

    if not args.no_timing:
        results["timing"] = timing(args)
        save()
    print(report(results))
    return 0


def report(results: dict) -> str:
    P = results["points"]
    lines = [f"sensitivities: {results['sensitivities']}", "",
             f"{'plan':<52}{'bits/w':>8}{'KL':>9}{'ppl %':>9}{'pred KL':>9}"]
    for k, v in sorted(P.items(), key=lambda kv: kv[1]["bits_per_weight"]):
        m = v["measured"]
        pred = "-" if v["predicted_kl"] is None else f"{v['predicted_kl']:.4f}"
        lines.append(f"{k:<52}{v['bits_per_weight']:>8.3f}{m['kl_mean']:>9.4f}{m['ppl_delta_pct']:>+9.2f}{pred:>9}")
    lines.append("")
    for row in results.get("comparisons", []):
        lines.append(f"budget {row['budget']:g}: " + "; ".join(
            f"{row[k]} KL {P[row[k]]['measured']['kl_mean']:.4f} ppl {P[row[k]]['measured']['ppl_delta_pct']:+.2f}%"
            for k in ("found_exact", "found_fisher", "best_uniform", "heuristic") if row.get(k)))
    if "timing" in results:
        t = results["timing"]
        lines.append(f"\nwall time: proxy search {t['proxy_search']['seconds']}s, GPTQ run {t['gptq_run']['seconds']}s,"
                     f" ratio {t['ratio']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
