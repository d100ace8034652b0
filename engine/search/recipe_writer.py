"""An allocation written as a recipe a person reads: one rule per (kind of layer, scheme) with a
pattern over layer indices (`mlp.down_proj in layers 0-3, 27-29`), not one exact-name rule per
layer, under a header that says where it came from and what it is predicted to do.

Layout: `base` is the candidate most units got; a catch-all rule (`class:Linear`) gives it to
every layer no other rule takes. For each kind of layer (q/k/v, o, gate/up, down), the
candidate most of its layers got becomes a rule for the kind (when it is not the base), and the
layers of that kind that got something else get a rule per candidate, listed before the kind's
rule (`overlap: first_match`: the first rule written wins). The written recipe must resolve to
exactly the allocation's plan (`check_round_trip`), or the search stops.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

from ..models.describe import ModelInfo
from ..plan import Plan, resolve_plan
from ..recipe import Recipe, parse_recipe
from ..targets import Target
from .candidates import Candidate
from .units import Unit


def _ranges(indices: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for i in sorted(indices):
        if out and i == out[-1][1] + 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


def describe_indices(indices: list[int]) -> str:
    """'0-3, 27-29'."""
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in _ranges(indices))


def index_regex(indices: list[int]) -> str:
    """A regex matching exactly these non-negative integers: [0-3]|2[7-9]."""
    parts = []
    by_prefix: dict[str, list[int]] = {}
    for i in sorted(indices):
        by_prefix.setdefault(str(i)[:-1], []).append(int(str(i)[-1]))
    for prefix, digits in by_prefix.items():
        for a, b in _ranges(digits):
            if a == b:
                parts.append(f"{prefix}{a}")
            elif b == a + 1:
                parts.append(f"{prefix}[{a}{b}]")
            else:
                parts.append(f"{prefix}[{a}-{b}]")
    return parts[0] if len(parts) == 1 else "(" + "|".join(parts) + ")"


def _kind_regex(kind: tuple[str, ...]) -> str:
    if len(kind) == 1:
        return re.escape(kind[0])
    parents = {k.rpartition(".")[0] for k in kind}
    if len(parents) == 1:
        parent = parents.pop()
        leaves = "|".join(re.escape(k.rpartition(".")[2]) for k in kind)
        return (re.escape(parent) + r"\." if parent else "") + f"({leaves})"
    return "(" + "|".join(re.escape(k) for k in kind) + ")"


def _match(units: list[Unit], all_of_kind: bool) -> str:
    u0 = units[0]
    if u0.block is None:
        names = [li.name for u in units for li in u.layers]
        return names[0] if len(names) == 1 else "re:(" + "|".join(re.escape(n) for n in names) + ")"
    index = r"\d+" if all_of_kind else index_regex([u.block for u in units])
    return f"re:{re.escape(u0.blocks)}\\.{index}\\.{_kind_regex(u0.kind)}"


def _fields(cand: Candidate, base: Candidate) -> dict[str, Any]:
    """The rule fields that state `cand` on top of a base that states `base`."""
    mine, theirs = cand.rule_fields(), base.rule_fields()
    out = {k: v for k, v in mine.items() if k == "args" or theirs.get(k) != v}
    if not base.keeps and cand.keeps:
        out = {"scheme": mine["scheme"]}
    return out


def build_recipe(name: str, units: list[Unit], assignment: dict[str, Candidate], source: Recipe,
                 description: str) -> tuple[dict[str, Any], dict[str, str]]:
    """(recipe node, a comment per rule name)."""
    count = Counter(assignment[u.name] for u in units)
    base = max(count, key=lambda c: (count[c], sum(u.numel for u in units if assignment[u.name] == c)))
    rules: dict[str, dict[str, Any]] = {}
    comments: dict[str, str] = {}
    overlap = False
    kinds: dict[tuple, list[Unit]] = {}
    for u in units:
        kinds.setdefault((u.blocks, u.kind), []).append(u)

    def add(rule: str, members: list[Unit], cand: Candidate, all_of_kind: bool, comment: str) -> None:
        n, key = 2, rule
        while key in rules:
            key, n = f"{rule}_{n}", n + 1
        rules[key] = {"match": _match(members, all_of_kind), **_fields(cand, base)}
        comments[key] = comment

    for (blocks, _), members in kinds.items():
        u0 = members[0]
        kind_count = Counter(assignment[u.name] for u in members)
        default = max(kind_count, key=lambda c: (kind_count[c], c == base))
        if blocks is None:  # layers outside the blocks: a rule each, when not the base
            for u in members:
                if assignment[u.name] != base:
                    add(f"{u.kind_slug}_{assignment[u.name].slug}", [u], assignment[u.name], False,
                        f"{u.name} at {assignment[u.name].label}")
            continue
        for cand in sorted({assignment[u.name] for u in members} - {default}, key=lambda c: c.label):
            chosen = [u for u in members if assignment[u.name] == cand]
            add(f"{u0.kind_slug}_{cand.slug}", chosen, cand, False,
                f"{u0.kind_label} in layer{'s' if len(chosen) > 1 else ''} "
                f"{describe_indices([u.block for u in chosen])}: {cand.label}")
        if default != base:
            others = [u for u in members if assignment[u.name] == default]
            overlap = overlap or len(others) < len(members)
            add(f"{u0.kind_slug}", members, default, True,
                f"{u0.kind_label} in the {'other ' if len(others) < len(members) else ''}{len(others)} layers: "
                f"{default.label}")
    add("rest", units, base, True, f"every other searched layer: {base.label}")
    rules["rest"]["match"] = "class:Linear"
    node: dict[str, Any] = {"name": name, "description": description,
                            "base": {k: v for k, v in base.rule_fields().items() if k != "args"}}
    if overlap:
        node["overlap"] = "first_match"
    node["tied_embeddings"] = source.tied_embeddings
    node["ignore"] = [m.text for m in source.ignore]
    node["rules"] = rules
    return node, comments


def _scalar(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value) if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", value) or value in (
            "true", "false", "null", "yes", "no", "on", "off") else value
    return json.dumps(value)


def to_yaml(node: dict[str, Any], comments: dict[str, str], header: list[str]) -> str:
    """The recipe as YAML text, comments in place (a regex is written double-quoted, as JSON)."""
    lines = [f"# {h}".rstrip() for h in header]
    for key in ("name", "description"):
        lines.append(f"{key}: {_scalar(node[key])}")
    lines.append("base:")
    lines += [f"  {k}: {_scalar(v)}" for k, v in node["base"].items()]
    if "overlap" in node:
        lines.append("overlap: first_match   # a layer takes the first rule below that matches it")
    lines.append(f"tied_embeddings: {node['tied_embeddings']}")
    lines.append("ignore: " + json.dumps(node["ignore"]))
    lines.append("rules:")
    for rule, fields in node["rules"].items():
        lines.append(f"  {rule}:  # {comments[rule]}")
        for k, v in fields.items():
            if isinstance(v, dict):
                lines.append(f"    {k}: " + json.dumps(v))
            else:
                lines.append(f"    {k}: {_scalar(v)}")
    return "\n".join(lines) + "\n"


def _matches(lp, cand: Candidate) -> bool:
    if cand.keeps:
        return not lp.is_quantized
    return (lp.is_quantized and lp.scheme == cand.scheme and lp.group_size == cand.group_size
            and lp.symmetric == cand.symmetric and (lp.activation or "none") == cand.activation
            and lp.algorithm == cand.algorithm and dict(lp.args) == dict(cand.args))


def check_round_trip(node: dict[str, Any], info: ModelInfo, target: Target, units: list[Unit],
                     assignment: dict[str, Candidate]) -> Plan:
    """The plan the recipe resolves to; raises if any searched layer differs from the allocation."""
    from ..algorithms import algorithm_names

    plan = resolve_plan(parse_recipe(node, algorithm_names()), info, target)
    wrong = [(li.name, assignment[u.name].label) for u in units for li in u.layers
             if not _matches(plan.layer(li.name), assignment[u.name])]
    if wrong:
        raise RuntimeError(f"the written recipe does not resolve to the allocation: {wrong[0][0]} should be "
                           f"{wrong[0][1]} (and {len(wrong) - 1} more); this is a bug in "
                           f"engine/search/recipe_writer.py")
    return plan
