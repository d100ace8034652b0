"""`qrecipe search`, the engine's part: decide everything that needs no weights (units,
candidates, bytes, the budget, the output file) and refuse a bad request before any load;
measure the sensitivities the cache lacks; allocate exactly; write the recipe; and measure
other allocations on the eval text for the Pareto front. It records nothing: the caller
passes a cache (the registry's, registry/sensitivity_cache.py) and records the result.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from .. import metric_names as mn
from ..config.settings import Settings
from ..errors import ConfigError
from ..files import safe_name
from ..events import OnSearchEvent, SearchEvent, SearchStage
from ..models.describe import ModelInfo
from ..plan import Plan
from ..tables import human_bytes
from . import allocate
from .accounting import Option, bits_per_weight, fixed_bytes, unit_options
from .cache import EXACT_KL, FISHER, HESSIAN, CacheScope, Key, SensitivityCache
from .candidates import Candidate, candidate_set
from .recipe_writer import build_recipe, check_round_trip, to_yaml
from .spec import SearchSpec, search_spec
from .units import Unit, build_units

SENSITIVITY_FORMAT = 1  # bump when how a sensitivity is computed changes: cached ones are then not reused


class Reporter:
    """Progress lines on stderr, stamped with the seconds since the search started, and a
    SearchEvent for each when a caller listens (a job)."""

    def __init__(self, on_event: OnSearchEvent | None = None) -> None:
        self.start = time.monotonic()
        self.on_event = on_event

    def __call__(self, stage: SearchStage, progress: float, message: str) -> None:
        print(f"[{time.monotonic() - self.start:6.1f}s] {message}", file=sys.stderr, flush=True)
        if self.on_event is not None:
            self.on_event(SearchEvent(stage, round(min(max(progress, 0.0), 1.0), 4), message))


@dataclass
class Prepared:
    """What the search decided before loading weights."""

    settings: Settings
    spec: SearchSpec
    info: ModelInfo
    units: list[Unit]
    candidates: list[Candidate]
    options: dict[str, list[Option]]
    fixed: int  # plan bytes no choice changes
    numel: int  # weights in the searched units
    notes: list[str]
    output: Path
    name: str

    @property
    def measure(self) -> str:
        """The measure the allocation minimises."""
        return EXACT_KL if self.spec.sensitivity == "exact" else {"fisher": FISHER, "hessian": HESSIAN}[self.spec.proxy]

    @property
    def measures(self) -> set[str]:
        """What is measured: the chosen measure, plus the cheap proxies beside an exact search
        (their rank correlation with it is reported)."""
        out = {self.measure}
        if self.spec.sensitivity == "exact":
            out |= {FISHER, HESSIAN}
        return out

    def capacity(self) -> int | None:
        """Bytes the searched units may take (None for a quality budget)."""
        b = self.spec.budget
        if b.kind == "bits_per_weight":
            return int(math.floor(b.value * self.numel / 8))
        if b.kind == "weight_bytes":
            return int(b.value) - self.fixed
        return None

    def cheapest(self) -> int:
        return sum(min(o.nbytes for o in self.options[u.name]) for u in self.units)


def _slug(text: str) -> str:
    """safe_name, also a recipe name: no `..`, no leading or trailing `-`."""
    return re.sub(r"\.{2,}", ".", safe_name(text)).strip("._-") or "model"


def _output(settings: Settings, spec: SearchSpec) -> Path:
    """The recipe file: its stem is the recipe's name (and its run folders'), so it must be a
    recipe name, as for any recipe file (engine/config/compose.py check_recipe_file_name)."""
    from ..config.compose import check_recipe_file_name

    if spec.output:
        out = Path(spec.output).expanduser()
        if out.suffix not in (".yaml", ".yml"):
            raise ConfigError(f"search.output: {out} should end in .yaml (the recipe's file name is its name)")
        check_recipe_file_name(out, "search.output")
        if out.exists():
            raise ConfigError(f"search.output: {out} already exists; choose a new file or delete it")
        return out.resolve()
    folder = Path(settings.paths.root).resolve() / "recipes"
    tag = spec.budget.tag
    # room for "search-", "-TAG" and a "-NNNN" number within a recipe name's 64 characters
    model = _slug(settings.model.name)[:max(1, 64 - len("search--") - len(tag) - 5)].rstrip("._-") or "model"
    stem = f"search-{model}-{tag}"
    check_recipe_file_name(folder / f"{stem}.yaml", "search.output")
    for n in range(1, 10_000):
        out = folder / (f"{stem}.yaml" if n == 1 else f"{stem}-{n}.yaml")
        if not out.exists():
            return out
    raise ConfigError(f"search.output: no free file name like {stem}.yaml in {folder}; pass search.output=PATH")


def prepare(settings: Settings) -> Prepared:
    """Every check that needs no weights: a bad budget, candidate, output or input file fails here."""
    from ..planning import check_inputs, model_info

    spec = search_spec(settings.sections)
    info = model_info(settings)
    check_inputs(settings, None, calibrates=True)  # a search always reads its calibration slice
    units = build_units(settings.recipe, info)
    if not units:
        raise ConfigError(f"recipe: every linear layer of {info.model_id} is ignored or tied; nothing to search "
                          f"(check recipe.ignore)")
    candidates, notes = candidate_set(spec.candidates, settings.target, spec.algorithm, dict(spec.args))
    options, more = unit_options(units, candidates, settings.target)
    notes += more
    p = Prepared(settings, spec, info, units, candidates, options, fixed_bytes(info, units, settings.target),
                 sum(u.numel for u in units), notes, _output(settings, spec), "")
    p.name = p.output.stem
    cap = p.capacity()
    if cap is not None and cap < p.cheapest():
        least = p.cheapest()
        what = (f"{bits_per_weight(least, p.numel):.4g} bits per weight" if spec.budget.kind == "bits_per_weight"
                else f"{least + p.fixed:,} weight bytes")
        raise ConfigError(f"search.budget.{spec.budget.kind}={spec.budget.value:g} is below the smallest mix the "
                          f"candidates allow ({what}); raise it or add cheaper candidates to search.candidates")
    return p


def describe(p: Prepared) -> str:
    s = p.spec
    lines = [f"search: {len(p.units)} units ({sum(len(u.layers) for u in p.units)} layers, {p.numel:,} weights) of "
             f"{p.info.model_id} for target {p.settings.target.name}; budget {s.budget.describe()}",
             f"  candidates: {', '.join(c.label for c in p.candidates)}"]
    lines += [f"  note: {n}" for n in p.notes]
    what = {"exact": "exact KL with each unit alone quantized", "proxy": f"proxy ({s.proxy})"}[s.sensitivity]
    c = p.settings.calib
    lines.append(f"  sensitivity: {what}, on {s.samples} x {s.seq_len} tokens of {c.data.name} "
                 f"(calib.data, calib.seed={c.seed}; search.samples, search.seq_len)")
    lines.append(f"  recipe will be written to {p.output}")
    return "\n".join(lines)


@dataclass
class Point:
    """One allocation the search priced, and (once measured) what it did on the eval text."""

    label: str
    assignment: dict[str, Candidate]
    unit_bytes: int
    weight_bytes: int  # the plan's total
    bits_per_weight: float
    predicted: float  # sum of the units' sensitivities in the search's measure
    node: dict[str, Any]
    chosen: bool = False
    measured: dict[str, Any] | None = None

    def mix(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.assignment.values():
            out[c.label] = out.get(c.label, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))


@dataclass
class SearchResult:
    prepared: Prepared
    values: dict[Key, float]
    computed: int
    cached: int
    sensitivity_seconds: float
    allocation_seconds: float
    exact: bool
    step: int
    chosen: Point
    front: list[Point]
    recipe_text: str
    spearman: dict[str, float] = field(default_factory=dict)
    scope_key: str = ""
    spearman_pairs: int = 0  # (unit, candidate) pairs the correlation is over

    @property
    def predicted_is_kl(self) -> bool:
        return self.prepared.measure != HESSIAN

    def predicted_figures(self, point: Point | None = None) -> dict[str, float]:
        pt = point or self.chosen
        out = {mn.BITS_PER_WEIGHT: pt.bits_per_weight, mn.WEIGHT_BYTES: pt.weight_bytes}
        if self.predicted_is_kl:
            out[mn.KL_MEAN] = pt.predicted
            out[mn.PPL_DELTA_PCT] = 100 * math.expm1(pt.predicted)
        else:
            out[mn.OUTPUT_ERROR] = pt.predicted
        return out


def cache_scope(p: Prepared, device: torch.device, dtype: torch.dtype) -> CacheScope:
    from ..evaluate.baseline_cache import model_fingerprint

    c = p.settings.calib
    data = Path(c.data.path)
    stamp = {"size": data.stat().st_size, "mtime": int(data.stat().st_mtime)} if data.is_file() else {}
    return CacheScope(p.info.model_id, model_fingerprint(p.settings), {
        "format": SENSITIVITY_FORMAT, "data": {"name": c.data.name, "path": c.data.path, "split": c.data.split,
                                               "field": c.data.field, **stamp},
        "seed": c.seed, "samples": p.spec.samples, "seq_len": p.spec.seq_len, "kl_topk": p.settings.eval.kl_topk,
        "device": device.type, "dtype": str(dtype).replace("torch.", "")})


def _point(p: Prepared, label: str, choice: tuple[int, ...], losses: list[list[float]], chosen: bool = False) -> Point:
    assignment = {u.name: p.options[u.name][j].candidate for u, j in zip(p.units, choice)}
    unit_bytes = sum(p.options[u.name][j].nbytes for u, j in zip(p.units, choice))
    predicted = float(sum(row[j] for row, j in zip(losses, choice)))
    bpw = bits_per_weight(unit_bytes, p.numel)
    c = p.settings.calib
    description = (f"qrecipe search: {p.spec.budget.describe()}; {bpw:.3f} bits per weight; sensitivities "
                   f"({p.measure}) on {p.spec.samples}x{p.spec.seq_len} tokens of {c.data.name}")
    node, comments = build_recipe(p.name if chosen else f"{p.name}-{label}", p.units, assignment, p.settings.recipe,
                                  description)
    node["_comments"] = comments
    return Point(label, assignment, unit_bytes, unit_bytes + p.fixed, bpw, predicted, node, chosen)


def recipe_node(point: Point) -> dict[str, Any]:
    return {k: v for k, v in point.node.items() if k != "_comments"}


def _spearman(values: dict[Key, float], p: Prepared) -> tuple[dict[str, float], int]:
    """Each proxy's rank correlation with the exact KL over the (unit, candidate) pairs that have
    both, and how many pairs that is."""
    from scipy.stats import spearmanr

    out, n = {}, 0
    pairs = [(u.name, o.candidate.label) for u in p.units for o in p.options[u.name] if not o.candidate.keeps]
    for proxy in (FISHER, HESSIAN):
        xs = [(values.get((EXACT_KL, u, c)), values.get((proxy, u, c))) for u, c in pairs]
        xs = [(a, b) for a, b in xs if a is not None and b is not None]
        if len(xs) >= 3 and len({a for a, _ in xs}) > 1 and len({b for _, b in xs}) > 1:
            out[proxy] = float(spearmanr([a for a, _ in xs], [b for _, b in xs]).statistic)
            n = len(xs)
    return out, n


def _front_budgets(p: Prepared, chosen_bytes: int, n: int) -> list[int]:
    """n budgets around the chosen size: half of them evenly down to the cheapest mix, the rest
    as far above."""
    low = p.cheapest()
    high = sum(max(o.nbytes for o in p.options[u.name]) for u in p.units)
    span = max(chosen_bytes - low, chosen_bytes // 20)
    k = (n + 1) // 2
    fractions = [-j / k for j in range(1, k + 1)] + [j / max(n - k, 1) for j in range(1, n - k + 1)]
    return [b for f in fractions if low <= (b := int(chosen_bytes + f * span)) <= high]


def find(settings: Settings, cache: SensitivityCache, on_event: OnSearchEvent | None = None,
         prepared: Prepared | None = None) -> SearchResult:
    """Sensitivities (cached ones reused), the exact allocation, the recipe file, the front's
    allocations (not yet measured: measure_points)."""
    from ..data import calibration_windows
    from ..models.loading import load_model, resolve_dtype
    from ..planning import local_device
    from .sensitivity import measure

    report = Reporter(on_event)
    p = prepared or prepare(settings)
    report(SearchStage.PLANNING, 0.01, describe(p))
    device = local_device(settings)
    dtype = resolve_dtype(settings.model.dtype, device)
    scope = cache_scope(p, device, dtype)
    known = cache.load(scope)
    wanted = {(m, u.name, o.candidate.label) for m in p.measures for u in p.units for o in p.options[u.name]
              if not o.candidate.keeps}
    hits = len(wanted & set(known))
    report(SearchStage.SENSITIVITY, 0.02, f"sensitivities: {hits} of {len(wanted)} cached (scope {scope.key})")
    if hits < len(wanted):
        report(SearchStage.SENSITIVITY, 0.03, f"loading {settings.model.name} ({dtype}, {device}) ...")
        model, tokenizer = load_model(settings.model, Path(settings.paths.cache), device, dtype)
        windows = calibration_windows(tokenizer, dataclasses.replace(settings.calib, samples=p.spec.samples,
                                                                     seq_len=p.spec.seq_len)).to(device)
        candidates_of = {u.name: [o.candidate for o in p.options[u.name]] for u in p.units}
        measured = measure(model, windows, p.spec.batch_size, settings.eval.kl_topk, p.info.model_type, p.units,
                           candidates_of, p.measures, known, settings.calib.seed,
                           lambda entries: cache.store(scope, entries),
                           lambda f, msg: report(SearchStage.SENSITIVITY, 0.05 + 0.85 * f, msg))
        values, computed, seconds = measured.values, measured.computed, measured.seconds
        del model
    else:
        values, computed, seconds = dict(known), 0, 0.0
        for u in p.units:
            for o in p.options[u.name]:
                if o.candidate.keeps:
                    for m in p.measures:
                        values[(m, u.name, o.candidate.label)] = 0.0
    report(SearchStage.ALLOCATING, 0.9,
           f"sensitivities: {computed} measured now, {hits} from the cache, in {seconds:.1f}s")

    start = time.perf_counter()
    costs = [[o.nbytes for o in p.options[u.name]] for u in p.units]
    losses = [[values[(p.measure, u.name, o.candidate.label)] for o in p.options[u.name]] for u in p.units]
    cap = p.capacity()
    if cap is not None:
        sol = allocate.min_loss(costs, losses, cap)
    else:
        sol = allocate.min_cost(costs, losses, p.spec.budget.max_kl_value())
        if sol is None:
            best = sum(min(r) for r in losses)
            raise ConfigError(f"search.budget.{p.spec.budget.kind}={p.spec.budget.value:g}: no mix of the candidates "
                              f"is predicted to meet it (the best predicts KL {best:.4g}); relax it or add "
                              f"candidates with more bits (keep, W8A16)")
    chosen = _point(p, "chosen", sol.choice, losses, chosen=True)
    front = []
    seen = {sol.choice}
    for b in _front_budgets(p, sol.cost, p.spec.front_points):
        s = allocate.min_loss(costs, losses, b)
        if s is not None and s.choice not in seen:
            seen.add(s.choice)
            front.append(_point(p, f"{bits_per_weight(s.cost, p.numel):.2f}bpw", s.choice, losses))
    alloc_seconds = time.perf_counter() - start
    check_round_trip(recipe_node(chosen), p.info, settings.target, p.units, chosen.assignment)
    spearman, pairs = _spearman(values, p)
    result = SearchResult(p, values, computed, hits, seconds, alloc_seconds, sol.exact, sol.step, chosen,
                          sorted(front, key=lambda pt: pt.unit_bytes), "", spearman, scope.key, pairs)
    result.recipe_text = to_yaml(recipe_node(chosen), chosen.node["_comments"], header(result))
    _write_atomic(p.output, result.recipe_text)
    report(SearchStage.ALLOCATING, 0.95, summary(result))
    return result


def header(r: SearchResult) -> list[str]:
    p, pt = r.prepared, r.chosen
    pred = r.predicted_figures()
    c = p.settings.calib
    quality = (f"KL {pred[mn.KL_MEAN]:.4g} per token (sum of the units' {p.measure} sensitivities), perplexity "
               f"{pred[mn.PPL_DELTA_PCT]:+.2f}% (as exp(KL) - 1)" if r.predicted_is_kl else
               f"output error {pt.predicted:.4g} (hessian proxy: a size budget's ordering, not a KL)")
    exactness = (f"exact (DP over {r.step}-byte cost steps)" if r.exact else
                 f"optimal for costs rounded up to {r.step}-byte steps (the budget holds)")
    lines = [
        "Generated by `qrecipe search`: the cheapest per-layer mix it found for the budget. Edit it like any recipe;",
        f"`qrecipe plan recipe={p.output}` shows its plan.",
        f"model:       {p.info.model_id} ({p.settings.model.path})",
        f"target:      {p.settings.target.name}",
        f"budget:      {p.spec.budget.describe()}",
        f"candidates:  {', '.join(cand.label for cand in p.candidates)}",
        f"sensitivity: {p.measure} on {p.spec.samples} x {p.spec.seq_len} tokens of {c.data.name} "
        f"(calib.seed={c.seed}); {r.computed} measured, {r.cached} from the cache",
        f"allocation:  {exactness}",
        f"date:        {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"predicted:   {pt.bits_per_weight:.4f} bits per weight over {p.numel:,} searched weights; plan weights "
        f"{human_bytes(pt.weight_bytes)} ({pt.weight_bytes:,} bytes)",
        f"             {quality}",
        "mix:         " + ", ".join(f"{k} x{v}" for k, v in pt.mix().items()) + " (units; a fused q/k/v or gate/up "
        "group is one unit)",
    ]
    if r.spearman:
        lines.append(f"proxy rank correlation with exact KL (Spearman, {r.spearman_pairs} (unit, candidate) pairs): " +
                     ", ".join(f"{k} {v:.3f}" for k, v in r.spearman.items()))
    return lines


def summary(r: SearchResult) -> str:
    pred = r.predicted_figures()
    q = (f"KL {pred[mn.KL_MEAN]:.4g}, perplexity {pred[mn.PPL_DELTA_PCT]:+.2f}%" if r.predicted_is_kl
         else f"output error {r.chosen.predicted:.4g}")
    lines = [f"found: {pred[mn.BITS_PER_WEIGHT]:.4f} bits per weight, plan weights "
             f"{human_bytes(pred[mn.WEIGHT_BYTES])}; "
             f"predicted {q}",
             "  mix: " + ", ".join(f"{k} x{v}" for k, v in r.chosen.mix().items()),
             f"  recipe: {r.prepared.output}"]
    for k, v in r.spearman.items():
        lines.append(f"  proxy {k}: Spearman {v:.3f} against exact KL over {r.spearman_pairs} (unit, candidate) pairs")
    return "\n".join(lines)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        if path.exists() and path.read_text() != text:
            raise ConfigError(f"search.output: {path} appeared while the search ran; the recipe is left in {tmp}")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- measuring allocations on the eval text (the Pareto front) --------------------------------

def plan_of(settings: Settings, info: ModelInfo, point: Point, device: torch.device, dtype: torch.dtype) -> Plan:
    from ..algorithms import algorithm_names
    from ..plan import resolve_plan
    from ..recipe import parse_recipe

    return resolve_plan(parse_recipe(recipe_node(point), algorithm_names()), info, settings.target, device, dtype)


def measure_points(settings: Settings, prepared: Prepared, points: list[Point], on_event: OnSearchEvent | None = None
                   ) -> None:
    """Quantize the float model per each point's plan and score it on the eval text against the
    baseline (the run's cached baseline when there is one): fills point.measured."""
    from ..data import load_documents, token_windows
    from ..evaluate.baseline_cache import baseline_key, baseline_key_parts, cache_folder, load_baseline
    from ..evaluate.divergence import compare_pass, reference_pass
    from ..models.loading import load_model, resolve_dtype
    from ..planning import local_device
    from ..quantize import prepare_model, quantize_model

    if not points:
        return
    report = Reporter(on_event)
    device = local_device(settings)
    dtype = resolve_dtype(settings.model.dtype, device)
    ev = settings.eval
    report(SearchStage.FRONT, 0.0, f"measuring {len(points)} more allocations for the Pareto front on {ev.windows} x "
                         f"{ev.seq_len} tokens of {ev.data.name} ...")
    model, tokenizer = load_model(settings.model, Path(settings.paths.cache), device, dtype)
    windows = token_windows(tokenizer, load_documents(ev.data, "eval.data"), ev.seq_len, ev.windows, "eval")
    cached = load_baseline(cache_folder(settings, baseline_key(baseline_key_parts(settings, device, dtype))))
    if cached is not None and ev.data.name in cached.texts:
        ref = cached.texts[ev.data.name]
    else:
        ref = reference_pass(model, windows, ev.batch_size, ev.kl_topk, progress=False)
    for i, pt in enumerate(points):
        plan = plan_of(settings, prepared.info, pt, device, dtype)
        variant = copy.deepcopy(model)
        quantize_model(variant, plan, calibration=settings.calib, tokenizer=tokenizer, progress=False)
        prepare_model(variant)
        q = compare_pass(variant, windows, ref, ev.batch_size, progress=False)
        del variant
        pt.measured = {mn.KL_MEAN: q.kl_mean, mn.KL_P99: q.kl_p99, mn.PPL: q.ppl, mn.PPL_BASELINE: ref.ppl,
                       mn.PPL_DELTA_PCT: 100 * (q.ppl / ref.ppl - 1), mn.TOP1_AGREEMENT: q.top1_agreement,
                       mn.EVAL_TOKENS: q.tokens, mn.EVAL_DATA: ev.data.name}
        report(SearchStage.FRONT, (i + 1) / len(points), f"  {pt.label}: {pt.bits_per_weight:.3f} bits per weight, KL "
                                                f"{q.kl_mean:.4f}, perplexity {pt.measured[mn.PPL_DELTA_PCT]:+.2f}%")


def pareto(points: list[dict[str, Any]], key: str) -> list[bool]:
    """Per point ({weight_bytes, key}), whether no other point has fewer-or-equal bytes and a
    lower-or-equal `key`, one of them strictly."""
    out = []
    for a in points:
        dominated = any(b is not a and b[key] is not None and a[key] is not None
                        and b["weight_bytes"] <= a["weight_bytes"] and b[key] <= a[key]
                        and (b["weight_bytes"] < a["weight_bytes"] or b[key] < a[key]) for b in points)
        out.append(a[key] is not None and not dominated)
    return out
