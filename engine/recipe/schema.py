"""Recipe schema: named rules, an ignore list, and a `base` block every rule inherits from.

    base:    {scheme: W4A16, algorithm: rtn, group_size: 128}
    rules:
      attn:  {match: "re:.*self_attn\\.(q|k|v|o)_proj", scheme: W8A16, group_size: channel}
      mlp:   {match: "re:.*mlp\\..*_proj"}
    ignore:  [lm_head]

A rule field left unset (or null) is taken from `base`, then from the scheme's default.
`parse_recipe` checks everything that can be checked without a model; `plan.resolve`
checks the rest against the model's layers and the target.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import RecipeError
from ..schemes import Scheme, get_scheme

POLICY_FIELDS = ("scheme", "algorithm", "group_size", "symmetric", "activation", "requires", "fallback", "args")
# Fields a command-line override may set on a rule that inherits them from base.
POLICY_FIELDS_FOR_OVERRIDE = POLICY_FIELDS
RULE_FIELDS = ("match",) + POLICY_FIELDS
BASE_FIELDS = POLICY_FIELDS
RECIPE_FIELDS = ("name", "description", "base", "rules", "ignore", "overlap", "tied_embeddings")
OVERLAP_MODES = ("error", "first_match")
# A recipe's name names its run folders (paths.root/runs/<time>-<name>-<hash>): a plain name,
# never a path. Stated in the error and in the README.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
NAME_RULE = "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit, without '..'"
TIED_MODES = ("keep", "quantize")
CAPABILITIES = ("int8", "fp8")


@dataclass(frozen=True)
class Matcher:
    """How a rule (or an ignore entry) selects layers: exact name, full-match regex, or class."""

    kind: str  # "exact" | "regex" | "class"
    pattern: str
    text: str  # as written

    TIERS = {"exact": 0, "regex": 1, "class": 2}

    @property
    def tier(self) -> int:
        return self.TIERS[self.kind]

    @classmethod
    def parse(cls, text: Any, field_name: str) -> "Matcher":
        if not isinstance(text, str) or not text.strip():
            raise RecipeError(f"{field_name}: expected a layer name, 're:REGEX' or 'class:CLASS', got {text!r}")
        if text.startswith("re:"):
            pattern = text[3:]
            try:
                re.compile(pattern)
            except re.error as e:
                raise RecipeError(f"{field_name}: invalid regex {pattern!r} ({e}); quote it on the command line "
                                  f"as 'path.match=\"re:...\"'") from None
            return cls("regex", pattern, text)
        if text.startswith("class:"):
            return cls("class", text[6:], text)
        return cls("exact", text, text)

    def matches(self, name: str, classes: tuple[str, ...]) -> bool:
        """`classes` holds the layer's own class name followed by its ancestors' class names."""
        if self.kind == "exact":
            return name == self.pattern
        if self.kind == "regex":
            return re.fullmatch(self.pattern, name) is not None
        return self.pattern in classes


@dataclass(frozen=True)
class Policy:
    """What a rule does to the layers it wins, after inheriting from `base`."""

    scheme: str
    algorithm: str
    group_size: int | None  # None: per-channel
    symmetric: bool
    activation: str  # "none" for weight-only, "dynamic" or "static"
    requires: tuple[str, ...] = ()
    fallback: str | None = None
    args: tuple[tuple[str, Any], ...] = ()

    def args_dict(self) -> dict[str, Any]:
        return dict(self.args)


@dataclass(frozen=True)
class Rule:
    name: str
    match: Matcher
    policy: Policy
    order: int  # position after composition: parent recipe, child, command line


@dataclass(frozen=True)
class Recipe:
    name: str
    rules: tuple[Rule, ...]
    ignore: tuple[Matcher, ...] = ()
    overlap: str = "error"
    tied_embeddings: str = "keep"
    description: str = ""
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


def _unknown_keys(node: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in node:
        if key not in allowed:
            hint = ", ".join(allowed)
            raise RecipeError(f"{where}.{key}: unknown key; allowed keys are {hint}")


def _group_size(value: Any, where: str) -> int | None:
    if isinstance(value, str) and value.lower() == "channel" or value == -1:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise RecipeError(f"{where}.group_size: expected a positive integer or 'channel', got {value!r}")
    return value


def _requires(value: Any, where: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else list(value or [])
    for item in items:
        if item not in CAPABILITIES:
            raise RecipeError(f"{where}.requires: unknown capability {item!r}; choose from {', '.join(CAPABILITIES)}")
    return tuple(items)


def _scheme(value: Any, where: str) -> Scheme:
    try:
        return get_scheme(value, f"{where}.scheme")
    except KeyError as e:
        raise RecipeError(e.args[0]) from None


def build_policy(base: Mapping[str, Any], rule: Mapping[str, Any], where: str, algorithms: tuple[str, ...]) -> Policy:
    """Merge rule over base over scheme defaults, and check each field on its own."""

    def pick(key: str) -> tuple[Any, str]:
        if rule.get(key) is not None:
            return rule[key], where
        return base.get(key), "recipe.base"

    scheme_value, scheme_from = pick("scheme")
    if scheme_value is None:
        raise RecipeError(f"{where}.scheme: not set here nor in recipe.base; set e.g. {where}.scheme=W8A16")
    scheme = _scheme(scheme_value, scheme_from)

    algorithm, algo_from = pick("algorithm")
    algorithm = algorithm or "rtn"
    if algorithm not in algorithms:
        raise RecipeError(f"{algo_from}.algorithm: unknown algorithm {algorithm!r}; choose one of {', '.join(algorithms)}")

    gs_value, gs_from = pick("group_size")
    if scheme.keeps_float:
        group_size = None
    elif gs_value is None:
        group_size = scheme.default_group_size
    else:
        group_size = _group_size(gs_value, gs_from)
        if group_size is not None and group_size not in scheme.group_sizes:
            allowed = ", ".join(str(g) for g in scheme.group_sizes) + (", " if scheme.group_sizes else "") + "channel"
            raise RecipeError(f"{gs_from}.group_size={group_size} is not supported by {scheme.name} (used by {where}); "
                              f"choose one of {allowed}")

    sym_value, sym_from = pick("symmetric")
    symmetric = True if sym_value is None else sym_value
    if not isinstance(symmetric, bool):
        raise RecipeError(f"{sym_from}.symmetric: expected true or false, got {sym_value!r}")
    if not symmetric and not scheme.keeps_float and not scheme.asymmetric_ok:
        raise RecipeError(f"{sym_from}.symmetric=false is not supported by {scheme.name} (used by {where}); set it to true")

    act_value, act_from = pick("activation")
    if scheme.activation_modes:
        activation = act_value or scheme.default_activation
        if activation not in scheme.activation_modes:
            raise RecipeError(f"{act_from}.activation: {scheme.name} takes {' or '.join(scheme.activation_modes)}, "
                              f"got {activation!r}")
    else:
        activation = "none"

    req_value, req_from = pick("requires")
    requires = _requires(req_value, req_from)

    fb_value, fb_from = pick("fallback")
    fallback = None
    if fb_value is not None:
        fallback = _scheme(fb_value, f"{fb_from}.fallback").name
        if fallback == scheme.name:
            raise RecipeError(f"{fb_from}.fallback: falls back to its own scheme {fallback}; name another scheme")

    args: dict[str, Any] = {}
    for source, src_where in ((base.get("args"), "recipe.base"), (rule.get("args"), where)):
        if source is None:
            continue
        if not isinstance(source, Mapping):
            raise RecipeError(f"{src_where}.args: expected a mapping of algorithm arguments, got {source!r}")
        args.update(source)

    policy = Policy(scheme=scheme.name, algorithm=algorithm, group_size=group_size, symmetric=symmetric,
                    activation=activation, requires=requires, fallback=fallback,
                    args=tuple(sorted((str(k), _freeze(v)) for k, v in args.items())))
    for key, reason in ignored_fields(scheme, policy).items():
        if _is_set(rule, key):
            raise RecipeError(f"{where}.{key}: {reason}, so this field would do nothing; remove it")
    return policy


def ignored_fields(scheme: Scheme, policy: Policy) -> dict[str, str]:
    """The policy fields a layer under `scheme` ignores, each with why: setting one is an error
    (a recipe never says something that silently does nothing)."""
    out = {}
    if scheme.keeps_float:
        for key in ("group_size", "symmetric", "activation", "algorithm", "args"):
            out[key] = f"{scheme.name} keeps the layer in float"
    elif not scheme.activation_modes:
        out["activation"] = f"{scheme.name} keeps activations in float, only W8A8 and FP8 quantize them"
    if not policy.requires and not scheme.requires:
        out["fallback"] = f"{scheme.name} asks nothing of the target and no requires is set, so no fallback is used"
    return out


def _is_set(node: Mapping[str, Any], key: str) -> bool:
    value = node.get(key)
    return value is not None and not (key == "activation" and value == "none") and not (key == "args" and not value)


def _check_base_fields(base: Mapping[str, Any], rules: list[tuple["Rule", Mapping[str, Any]]]) -> None:
    """A field set in base that every rule inheriting it ignores does nothing: an error."""
    for key in POLICY_FIELDS:
        if not _is_set(base, key):
            continue
        heirs = [r for r, node in rules if not _is_set(node, key)]
        reasons = [ignored_fields(get_scheme(r.policy.scheme, "scheme"), r.policy).get(key) for r in heirs]
        if heirs and all(reasons):
            names = ", ".join(r.name for r in heirs)
            raise RecipeError(f"recipe.base.{key}: ignored by every rule that inherits it ({names}): {reasons[0]}; "
                              f"remove it")


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _as_mapping(value: Any, where: str, fix: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise RecipeError(f"{where}: expected a mapping, got {value!r}; {fix}")
    return value


def parse_recipe(node: Any, algorithms: tuple[str, ...], name: str = "recipe") -> Recipe:
    """Validate a composed `recipe` node (plain containers) into a frozen Recipe."""
    node = _as_mapping(node, "recipe", "choose a recipe with recipe=NAME")
    _unknown_keys(node, RECIPE_FIELDS, "recipe")
    base = _as_mapping(node.get("base"), "recipe.base", "write fields such as scheme: and algorithm: under it")
    if "match" in base:
        raise RecipeError("recipe.base.match: base is inherited by every rule and cannot match layers; "
                          "move match into a rule")
    _unknown_keys(base, BASE_FIELDS, "recipe.base")
    rules_node = _as_mapping(node.get("rules"), "recipe.rules",
                             "rules are a mapping NAME: {match: ..., scheme: ...}")
    rules, nodes = [], []
    for order, (rule_name, rule_node) in enumerate(rules_node.items()):
        where = f"recipe.rules.{rule_name}"
        rule_node = _as_mapping(rule_node, where, "a rule is a mapping with match: and scheme:")
        _unknown_keys(rule_node, RULE_FIELDS, where)
        if rule_node.get("match") is None:
            raise RecipeError(f"{where}.match: missing; every rule needs match: (a layer name, 're:REGEX' or "
                              f"'class:CLASS'); existing rules are {', '.join(map(str, rules_node))}")
        matcher = Matcher.parse(rule_node["match"], f"{where}.match")
        rules.append(Rule(str(rule_name), matcher, build_policy(base, rule_node, where, algorithms), order))
        nodes.append(rule_node)
    _check_base_fields(base, list(zip(rules, nodes)))
    ignore_node = node.get("ignore") or []
    if isinstance(ignore_node, str) or not isinstance(ignore_node, (list, tuple)):
        raise RecipeError(f"recipe.ignore: expected a list of layer names or patterns, got {ignore_node!r}")
    ignore = tuple(Matcher.parse(t, f"recipe.ignore[{i}]") for i, t in enumerate(ignore_node))
    overlap = node.get("overlap") or "error"
    if overlap not in OVERLAP_MODES:
        raise RecipeError(f"recipe.overlap: expected one of {', '.join(OVERLAP_MODES)}, got {overlap!r}")
    tied = node.get("tied_embeddings") or "keep"
    if tied not in TIED_MODES:
        raise RecipeError(f"recipe.tied_embeddings: expected one of {', '.join(TIED_MODES)}, got {tied!r}")
    if not rules:
        raise RecipeError("recipe.rules: none, so no layer would be quantized; add a rule, e.g. "
                          "+recipe.rules.all.match=class:Linear")
    recipe_name = str(node.get("name") or name)
    if not NAME_PATTERN.match(recipe_name) or ".." in recipe_name:
        raise RecipeError(f"recipe.name: {recipe_name!r} is not a recipe name ({NAME_RULE}); it names the run "
                          f"folders, so set e.g. recipe.name=my-w4a16")
    return Recipe(name=recipe_name, rules=tuple(rules), ignore=ignore, overlap=overlap,
                  tied_embeddings=tied, description=str(node.get("description") or ""), raw=node)
