"""Resolve a recipe against a model's structure and a deployment target: a pure function
of (Recipe, ModelInfo, Target, local device), run on the meta device, so even a 70B plan is
instant.

Precedence, stated once (and tested as a table in tests/engine/plan/test_precedence.py):
  1. `ignore` beats every rule;
  2. a tied lm_head is kept unless recipe.tied_embeddings=quantize;
  3. tiers: exact name beats `re:` (full match) beats `class:`;
  4. inside the winning tier, the first rule in composed order wins: parent recipe's rules,
     then the child's new rules, then rules added on the command line (overriding a rule
     keeps its place). Two rules of that tier that match one layer with different policies
     are an error unless the recipe sets `overlap: first_match`.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ...kernels import QuantParams, get_format
from ..algorithms import get_algorithm
from ..backends import select_backend
from ..errors import RecipeError
from ..models.describe import EXPERTS, ROUTER, ModelInfo, UnitInfo, dtype_bytes
from ..models.families import moe_layout
from ..recipe import Policy, Recipe, Rule
from ..schemes import SCHEMES
from ..targets import Target
from .capacity import capacity_report
from .types import FALLBACK, KEPT, QUANTIZED, SKIPPED, LayerPlan, Plan


def _winner(recipe: Recipe, li: UnitInfo) -> Rule | None:
    matching = [r for r in recipe.rules if r.match.matches(li.name, li.classes)]
    if not matching:
        return None
    best_tier = min(r.match.tier for r in matching)
    tier = sorted((r for r in matching if r.match.tier == best_tier), key=lambda r: r.order)
    first = tier[0]
    if recipe.overlap == "error":
        for other in tier[1:]:
            if other.policy != first.policy:
                raise RecipeError(
                    f"recipe.rules.{first.name} and recipe.rules.{other.name} both match {li.name} "
                    f"({first.match.text!r} and {other.match.text!r}) with different policies; narrow one match, "
                    f"give them the same policy, or set recipe.overlap=first_match to let the earlier rule win")
    return first


def _group_from(recipe: Recipe, rule: Rule) -> str:
    node = (recipe.raw.get("rules") or {}).get(rule.name) or {}
    return f"recipe.rules.{rule.name}" if node.get("group_size") is not None else \
        f"recipe.base (inherited by rule {rule.name})"


def _params_for(scheme_name: str, policy: Policy) -> tuple[QuantParams, list[str]]:
    """The layer's parameters under `scheme_name`, and what had to change from the rule's to fit
    it (only a fallback scheme can differ: the recipe's own scheme was validated against them)."""
    scheme = SCHEMES[scheme_name]
    group = policy.group_size
    if group is not None and group not in scheme.group_sizes:
        group = scheme.default_group_size
    activation = policy.activation if policy.activation in scheme.activation_modes else scheme.default_activation
    symmetric = policy.symmetric if scheme.asymmetric_ok else True
    changed = []
    if group != policy.group_size:
        changed.append(f"group size {_group_text(policy.group_size)} -> {_group_text(group)}")
    if symmetric != policy.symmetric:
        changed.append("asymmetric -> symmetric")
    if activation != policy.activation:
        def name(a: str) -> str:
            return "float" if a == "none" else a

        changed.append(f"{name(policy.activation)} activations -> {name(activation)}")
    return QuantParams(group_size=group, symmetric=symmetric, activation=activation), changed


def _group_text(group: int | None) -> str:
    return "channel" if group is None else str(group)


def _apply(rule: Rule, li: UnitInfo, target: Target) -> tuple[str, str, str, QuantParams | None]:
    """(status, reason, scheme name, params) for a layer a rule won."""
    policy = rule.policy
    scheme = SCHEMES[policy.scheme]
    if scheme.keeps_float:
        return KEPT, f"rule {rule.name} keeps it in {scheme.name}", scheme.name, None
    missing = target.lacks(tuple(policy.requires) + tuple(scheme.requires))
    if not missing:
        return QUANTIZED, f"rule {rule.name}", scheme.name, _params_for(scheme.name, policy)[0]
    if policy.fallback is None:
        raise RecipeError(
            f"recipe.rules.{rule.name}: {scheme.name} needs {', '.join(missing)}, which target {target.name} lacks; "
            f"add recipe.rules.{rule.name}.fallback=W8A16 (or another scheme) or choose a target that has it")
    fallback = SCHEMES[policy.fallback]
    still_missing = target.lacks(fallback.requires)
    if still_missing:
        raise RecipeError(f"recipe.rules.{rule.name}.fallback: {fallback.name} also needs {', '.join(still_missing)}, "
                          f"which target {target.name} lacks; fall back to a weight-only scheme such as W8A16")
    if fallback.keeps_float:
        return KEPT, f"rule {rule.name}: target {target.name} lacks {', '.join(missing)}; kept in {fallback.name}", \
            fallback.name, None
    params, changed = _params_for(fallback.name, policy)
    fits = f" ({', '.join(changed)}, as {fallback.name} takes)" if changed else ""
    return FALLBACK, f"rule {rule.name}: target {target.name} lacks {', '.join(missing)}, so {fallback.name} " \
                     f"instead of {scheme.name}{fits}", fallback.name, params


def _check_unmatched(recipe: Recipe, info: ModelInfo) -> None:
    candidates = [u for u in info.units if u.quantizable]
    for rule in recipe.rules:
        if not any(rule.match.matches(u.name, u.classes) for u in candidates):
            routers = [u.name for u in info.units if u.kind == ROUTER and rule.match.matches(u.name, u.classes)]
            if routers:
                raise RecipeError(f"recipe.rules.{rule.name}.match: {rule.match.text!r} matches only MoE routers "
                                  f"(e.g. {routers[0]}), which qrecipe keeps in float; delete the rule with "
                                  f"~recipe.rules.{rule.name}")
            example = candidates[0].name if candidates else "(none)"
            raise RecipeError(f"recipe.rules.{rule.name}.match: {rule.match.text!r} matches no linear layer of "
                              f"{info.model_id} (names look like {example!r}; regexes must match the full name); "
                              f"fix the pattern or delete the rule with ~recipe.rules.{rule.name}")


ROUTER_REASON = "MoE router (picks each token's experts): always kept in {dtype}"


def _unsupported_experts(info: ModelInfo, unit: UnitInfo) -> str | None:
    """Why an expert tensor cannot be quantized, or None."""
    layout = moe_layout(info.model_type)
    module, _, leaf = unit.name.rpartition(".")
    if layout is None or not module.endswith("." + layout.experts) or leaf not in (layout.gate_up, layout.down):
        return (f"expert tensor of model type {info.model_type!r}, whose experts layout is not described in "
                f"engine/models/families.py MOE_LAYOUTS; kept in float")
    return None


def _check_group_sizes(recipe: Recipe, plan_layers: list[LayerPlan], won_by: dict[str, Rule]) -> None:
    bad: dict[str, list[LayerPlan]] = {}
    for lp in plan_layers:
        if not lp.is_quantized:
            continue
        scheme = SCHEMES[lp.scheme]
        reason = get_format(scheme.format).check(lp.out_features, lp.in_features, lp.quant_params())
        if reason:
            bad.setdefault(won_by[lp.name].name, []).append(lp)
    for rule_name, layers in bad.items():
        rule = next(r for r in recipe.rules if r.name == rule_name)
        lp0 = layers[0]
        scheme = SCHEMES[lp0.scheme]
        if lp0.group_size is not None and lp0.in_features % lp0.group_size:
            ins = {lp.in_features for lp in plan_layers if lp.is_quantized and won_by.get(lp.name) is rule}
            works = [str(g) for g in scheme.group_sizes if all(i % g == 0 for i in ins)] + ["channel"]
            raise RecipeError(
                f"{_group_from(recipe, rule)}: group_size={lp0.group_size} does not divide the input size of "
                f"{len(layers)} layer(s) it matches (e.g. {lp0.name}, in_features={lp0.in_features}); "
                f"group sizes that work for all of them: {', '.join(works)}")
        reason = get_format(scheme.format).check(lp0.out_features, lp0.in_features, lp0.quant_params())
        raise RecipeError(f"recipe.rules.{rule_name}: {lp0.name} cannot be stored as {scheme.name}: {reason}")


def _signature(lp: LayerPlan) -> tuple:
    if not lp.is_quantized:
        return ("float",)
    return (lp.scheme, lp.group_size, lp.symmetric, lp.activation)


def _bytes_after(fmt, lp: LayerPlan, params: QuantParams) -> int:
    return fmt.nbytes(lp.out_features, lp.in_features, params) * lp.num_experts


def _describe(lp: LayerPlan) -> str:
    if not lp.is_quantized:
        return f"{lp.name.rsplit('.', 1)[-1]}: {lp.status} ({lp.reason})"
    group = "channel" if lp.group_size is None else f"g{lp.group_size}"
    return f"{lp.name.rsplit('.', 1)[-1]}: {lp.scheme} {group} via {lp.reason}"


def _check_fused(info: ModelInfo, by_name: dict[str, LayerPlan]) -> None:
    broken = [g for g in info.fused_groups if len({_signature(by_name[n]) for n in g}) > 1]
    if broken:
        g = broken[0]
        prefix = g[0].rsplit(".", 1)[0]
        leaves = ", ".join(n.rsplit(".", 1)[-1] for n in g)
        detail = "; ".join(_describe(by_name[n]) for n in g)
        what = "one fused MoE layer (vLLM's FusedMoE takes one scheme for all its experts' projections)" \
            if by_name[g[0]].kind == EXPERTS else "one tensor"
        raise RecipeError(f"{prefix}.{{{leaves}}} are fused into {what} by serving engines but get different "
                          f"schemes ({detail}){f' and {len(broken) - 1} more groups alike' if len(broken) > 1 else ''}; "
                          f"give them one scheme (one rule matching all of them, or the same fields)")


def resolve_plan(recipe: Recipe, info: ModelInfo, target: Target, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> Plan:
    """`device` and `dtype` are where and in what this machine will run the model: they choose
    each layer's backend, not the variant (the plan hash ignores them)."""
    device = torch.device(device)
    elem = dtype_bytes(target.dtype)
    _check_unmatched(recipe, info)
    layers: list[LayerPlan] = []
    won_by: dict[str, Rule] = {}
    fused_of = {n: ".".join([g[0].rsplit(".", 1)[0], "+".join(x.rsplit(".", 1)[-1] for x in g)])
                for g in info.fused_groups for n in g}
    for li in info.units:
        tied = li.name == info.tied_lm_head
        bias_bytes = li.out_features * elem if li.bias else 0
        before = 0 if tied else li.numel * elem + bias_bytes
        lp = LayerPlan(name=li.name, module_class=li.classes[0], in_features=li.in_features,
                       out_features=li.out_features, bias=li.bias, status=KEPT, reason="no rule matches",
                       scheme=_float_label(target.dtype),
                       bytes_before=before, bytes_after=before, fused_group=fused_of.get(li.name),
                       kind=li.kind, num_experts=li.num_experts)
        ignored = next((m for m in recipe.ignore if m.matches(li.name, li.classes)), None)
        unsupported = _unsupported_experts(info, li) if li.kind == EXPERTS else None
        if li.kind == ROUTER:
            lp = replace(lp, reason=ROUTER_REASON.format(dtype=_float_label(target.dtype)))
        elif ignored is not None:
            lp = replace(lp, status=SKIPPED, reason=f"recipe.ignore: {ignored.text}")
        elif unsupported is not None:
            lp = replace(lp, reason=unsupported)
        elif tied and recipe.tied_embeddings == "keep":
            lp = replace(lp, reason="tied to the input embeddings (shares their bytes); "
                                    "set recipe.tied_embeddings=quantize to quantize an untied copy")
        else:
            rule = _winner(recipe, li)
            if rule is not None:
                won_by[li.name] = rule
                status, reason, scheme_name, params = _apply(rule, li, target)
                lp = replace(lp, status=status, reason=reason, rule=rule.name)
                if params is not None:
                    fmt = get_format(SCHEMES[scheme_name].format)
                    ok = fmt.check(li.out_features, li.in_features, params) is None
                    backend = select_backend(fmt, params, li.in_features, li.out_features, device, dtype,
                                             experts=li.kind == EXPERTS)
                    lp = replace(lp, scheme=scheme_name, algorithm=rule.policy.algorithm,
                                 group_size=params.group_size, symmetric=params.symmetric,
                                 activation=params.activation, args=rule.policy.args_dict(),
                                 calibrates=get_algorithm(rule.policy.algorithm).needs_calibration
                                 or params.activation == "static",
                                 backend=backend.name, emulated=backend.emulated,
                                 bytes_after=(_bytes_after(fmt, lp, params) + bias_bytes) if ok else before)
                else:
                    lp = replace(lp, scheme=scheme_name)
        layers.append(lp)
    by_name = {lp.name: lp for lp in layers}
    _check_group_sizes(recipe, layers, won_by)
    _check_fused(info, by_name)
    notes = list(info.notes)
    if any(lp.emulated for lp in layers):
        notes.append(f"layers marked emulated run this format's reference numerics on {device.type}: "
                     f"quality is measured faithfully, speed is not the target's")
    experts = [lp for lp in layers if lp.kind == EXPERTS and lp.is_quantized]
    if experts:
        notes.append(f"{len(experts)} expert tensors (experts x out x in) are quantized with one scale set per "
                     f"expert; their backend runs each expert on the tokens routed to it")
    plan = Plan(model_id=info.model_id, model_type=info.model_type, recipe=recipe.name, target=target.name,
                dtype=target.dtype, device=str(device), layers=layers, other_bytes=info.other_params * elem,
                notes=notes)
    plan.capacity = capacity_report(plan, info, target)
    return plan


def _float_label(dtype: str) -> str:
    return {"bfloat16": "BF16", "float16": "FP16", "float32": "FP32"}.get(dtype, dtype.upper())
