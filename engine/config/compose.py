"""Compose the config with Hydra's compose API.

Recipes live in recipes/ but must form the Hydra group `recipe` (adding the repo root to
the search path would make the group `recipes`, and `recipe=w8a16` would then silently
set the recipe to a string). So each recipes/*.yaml is registered in Hydra's ConfigStore
under group `recipe`; a recipe extends another through its own defaults list.

Overrides a user types for a rule field the rule inherits from `base`
(`recipe.rules.mlp.group_size=64`) are rewritten to Hydra's add-or-override form, so the
plain form works whether or not the rule spells the field out.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType
from hydra.errors import (ConfigCompositionException, HydraException, MissingConfigException,
                          OverrideParseException)
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..errors import ConfigError
from .recipes import ENV as RECIPE_PATH_ENV
from .recipes import available_recipes, recipe_files
from .resolvers import register_resolvers

_broken: dict[str, str] = {}  # recipe name -> why its file cannot be read (recipes.read_recipe)


def conf_dir() -> Path:
    import qrecipe.conf

    return Path(qrecipe.conf.__file__).resolve().parent


def register_recipes(user: bool = True) -> None:
    """Register every readable recipe file in the ConfigStore group `recipe` (a later folder's
    file of the same name wins; user=False: the shipped ones only); note the broken ones, so
    that choosing one says why."""
    cs = ConfigStore.instance()
    _broken.clear()
    for name, found in recipe_files(user).items():
        if found.error:
            _broken[name] = found.error
        else:
            cs.store(group="recipe", name=name, node=found.node, provider="qrecipe")


def _check_chosen_recipe(overrides) -> None:
    """The recipe the overrides choose (or the default) must not be a broken file."""
    chosen = next((ov.value() for ov in overrides if ov.key_or_group == "recipe" and ov.package is None
                   and isinstance(ov.value(), str)), None) or _default_recipe()
    if chosen in _broken:
        raise ConfigError(f"recipe={chosen}: cannot read {_broken[chosen]}; fix the file or remove it from "
                          f"{RECIPE_PATH_ENV}")


def _default_recipe() -> str | None:
    """The recipe conf/config.yaml's defaults list chooses."""
    for entry in OmegaConf.load(conf_dir() / "config.yaml").get("defaults", []):
        if isinstance(entry, DictConfig) and "recipe" in entry:
            return str(entry["recipe"])
    return None


_PARSER = None


def _parser() -> OverridesParser:
    global _PARSER
    if _PARSER is None:
        _PARSER = OverridesParser.create()
    return _PARSER


# No setting of a qrecipe config has a longer key; longer ones are refused before Hydra looks
# them up (it would try them as file names, and fail on the operating system's name limit).
MAX_KEY_CHARS, MAX_KEY_PARTS = 200, 16
MAX_VALUE_DEPTH = 16  # lists and mappings inside a value (recipe args are two deep)


def _depth(value) -> int:
    """How deeply lists and mappings nest in an override's value (counted without recursion)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend((v, depth + 1) for v in node)
    return deepest


def parse_overrides(overrides: list[str]):
    try:
        parsed = _parser().parse_overrides(list(overrides))
    except OverrideParseException as e:
        first = str(e).strip().splitlines()[0]
        raise ConfigError(f"cannot parse override: {first}; quote values with special characters, e.g. "
                          f"'recipe.rules.attn.match=\"re:.*self_attn\\..*\"'") from None
    except RecursionError:
        raise ConfigError("cannot parse override: a value nests lists or mappings too deeply; write it flatter")
    for ov in parsed:
        key = ov.key_or_group
        if len(key) > MAX_KEY_CHARS or key.count(".") >= MAX_KEY_PARTS:
            raise ConfigError(f"{key[:60]}...: a key of {len(key)} characters in {key.count('.') + 1} parts; no "
                              f"setting has more than {MAX_KEY_CHARS} characters or {MAX_KEY_PARTS} parts")
        if not ov.is_sweep_override() and _depth(ov.value()) > MAX_VALUE_DEPTH:
            raise ConfigError(f"cannot parse override: a value nests lists or mappings too deeply (more than "
                              f"{MAX_VALUE_DEPTH} levels in {key}); write it flatter")
    return parsed


@functools.cache
def _rule_field() -> re.Pattern:
    # imported here: the recipe schema imports the weight formats (torch), which commands that
    # only read the registry must not pay for
    from ..recipe import POLICY_FIELDS_FOR_OVERRIDE

    return re.compile(r"^recipe\.(base|rules\.[^.]+)\.((" + "|".join(POLICY_FIELDS_FOR_OVERRIDE) + r")|args\.[^.]+)$"
                      r"|^recipe\.(overlap|tied_embeddings|ignore|description)$")


def normalize_overrides(overrides: list[str]) -> list[str]:
    """`recipe.rules.R.F=V`, `recipe.base.F=V` and recipe-level fields a recipe may leave
    out (`recipe.overlap=...`) -> `++...`: add or override."""
    out = []
    for ov, text in zip(parse_overrides(overrides), overrides):
        if ov.type == OverrideType.CHANGE and ov.package is None and _rule_field().match(ov.key_or_group):
            text = "++" + text
        out.append(text)
    return out


def expand_sweep(overrides: list[str]) -> list[list[str]]:
    """Hydra's sweep syntax (`a=1,2`, `range(...)`, `choice(...)`) -> one override list per point."""
    parsed = parse_overrides(overrides)
    axes = []
    for ov, text in zip(parsed, overrides):
        if ov.is_sweep_override():
            key = ov.get_key_element()
            axes.append([f"{key}={v}" for v in ov.sweep_string_iterator()])
        else:
            axes.append([text])
    return [list(point) for point in itertools.product(*axes)]


def _group_options(group: str) -> list[str]:
    if group == "recipe":
        return available_recipes()
    path = conf_dir() / group
    return sorted(p.stem for p in path.glob("*.yaml")) if path.is_dir() else []


def _translate(e: Exception, overrides: list[str]) -> ConfigError:
    msg = str(e)
    m = re.search(r"Could not find '([^']+)/([^']+)'", msg)
    if isinstance(e, MissingConfigException) or m:
        if m:
            group, name = m.group(1), m.group(2)
            if group == "recipe" and name in _broken:
                return ConfigError(f"recipe={name}: cannot read {_broken[name]}; fix the file or remove it from "
                                   f"{RECIPE_PATH_ENV}")
            options = _group_options(group)
            what = "recipe" if group == "recipe" else f"{group} config"
            return ConfigError(f"{group}={name}: no {what} named {name!r}; available: {', '.join(options)}")
        return ConfigError(msg.strip().splitlines()[0])
    m = re.search(r"Could not override '([^']+)'", msg)
    if m:
        key = m.group(1)
        return ConfigError(f"{key}: no such key in the composed config; check the spelling, or add it with "
                           f"+{key}=VALUE")
    m = re.search(r"Could not (?:delete|append to) (?:from config\. )?'?([^'.\s]+(?:\.[^'\s]+)*)'?", msg)
    if m:
        return ConfigError(f"{m.group(1)}: {msg.strip().splitlines()[0]}")
    m = re.search(r"Error merging override (\S+)", msg)
    if m:
        cause = str(e.__cause__ or "").strip().splitlines()
        return ConfigError(f"override {m.group(1)} does not fit the config ({cause[0] if cause else msg}); a mapping "
                           f"such as eval.data is replaced by choosing a config: data@eval.data=text")
    return ConfigError(" ".join(msg.strip().split()))


def has_interpolation(value) -> bool:
    """Whether an override's value (or any key or item inside it) holds an interpolation `${...}`."""
    if isinstance(value, dict):
        return any("${" in str(k) or has_interpolation(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(has_interpolation(v) for v in value)
    return isinstance(value, str) and "${" in value


INTERPOLATION_REFUSED = "interpolations (${...}) are refused in overrides; write the value itself"


_RECIPE_FILE = re.compile(r"^recipe=(.+\.ya?ml)$")


def recipe_file_overrides(overrides: list[str], allowed: bool = True) -> list[str]:
    """`recipe=PATH.yaml` (a recipe file anywhere, e.g. one `qrecipe search` wrote) -> the file
    registered in the group under its stem, and the override rewritten to `recipe=STEM`. The file
    is read as the recipe folders' files are (engine/config/recipes.py: a broken file is one line
    naming it) and its stem must be a recipe name. allowed=False (a job request) refuses the form."""
    from .recipes import read_recipe

    out = []
    for text in overrides:
        m = _RECIPE_FILE.match(text)
        if m:
            if not allowed:
                raise ConfigError(f"recipe={m.group(1)}: a recipe file by path is not accepted here; name one of "
                                  f"qrecipe's recipes (recipe=NAME)")
            path = Path(m.group(1)).expanduser()
            if not path.is_file():
                raise ConfigError(f"recipe={m.group(1)}: no such recipe file; pass an existing .yaml file or a recipe "
                                  f"name ({', '.join(available_recipes())})")
            check_recipe_file_name(path, "recipe")
            found = read_recipe(path)
            if found.error:
                raise ConfigError(f"recipe={m.group(1)}: cannot read {found.error}; fix the file")
            ConfigStore.instance().store(group="recipe", name=path.stem, node=found.node, provider="qrecipe")
            _broken.pop(path.stem, None)
            text = f"recipe={path.stem}"
        out.append(text)
    return out


def check_recipe_file_name(path: Path, where: str) -> None:
    """A recipe file's stem is its name in the recipe group (and its run folders'): it must be a
    recipe name (engine/recipe/schema.py's rule)."""
    from ..recipe.schema import NAME_PATTERN, NAME_RULE

    if not NAME_PATTERN.match(path.stem) or ".." in path.stem:
        raise ConfigError(f"{where}: {path.name!r} is not a recipe file name ({NAME_RULE}, then .yaml); rename it, "
                          f"e.g. my-search.yaml")


def compose(overrides: list[str] | tuple[str, ...] = (), user_recipes: bool = True) -> DictConfig:
    """The composed config for these overrides (Hydra's compose API: no output folders, no cwd change).
    user_recipes=False leaves out QRECIPE_RECIPE_PATH (a job request names shipped recipes only).

    A value typed on the command line (or sent in a job request) is taken as written: an
    interpolation such as `${oc.env:HOME}` in it is refused, so an override can neither copy the
    environment into a run's record nor build a value (a name, a path) that no check saw."""
    register_resolvers()
    register_recipes(user_recipes)
    overrides = normalize_overrides(recipe_file_overrides(list(overrides), allowed=user_recipes))
    for ov in parse_overrides(overrides):
        key = ov.key_or_group
        if key == "hydra" or key.startswith(("hydra.", "hydra/")) or ov.package and ov.package.startswith("hydra"):
            raise ConfigError(f"{key}: hydra.* settings are not part of a qrecipe config; remove the override")
        if not ov.is_sweep_override() and has_interpolation(ov.value()):
            raise ConfigError(f"{key}: {INTERPOLATION_REFUSED}")
    _check_chosen_recipe(parse_overrides(overrides))
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3", job_name="qrecipe"):
            return hydra_compose(config_name="config", overrides=overrides)
    except (ConfigCompositionException, MissingConfigException, OverrideParseException) as e:
        raise _translate(e, overrides) from None
    except (HydraException, OmegaConfBaseException) as e:  # any other odd input: one line, never a traceback
        raise ConfigError(" ".join(str(e).strip().split()[:60]) or type(e).__name__) from None
    except RecursionError:
        raise ConfigError("the overrides nest too deeply to compose; write them flatter") from None
    finally:
        GlobalHydra.instance().clear()


def _flat(node: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(node, dict) and node:
        out: dict[str, str] = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: json.dumps(node, default=str) if isinstance(node, (list, dict)) else str(node)}


def recipe_changes(recipe: DictConfig) -> list[str] | None:
    """How a resolved recipe differs from its own file (`recipe=NAME` alone), as override-like
    text: ['base.group_size=64', '~rules.attn']; None when no recipe file has its name."""
    name = str(recipe.get("name", ""))
    if name not in available_recipes():
        return None
    mine = OmegaConf.to_container(recipe, resolve=True)
    theirs = OmegaConf.to_container(compose([f"recipe={name}"]).recipe, resolve=True)
    for node in (mine, theirs):
        node.pop("description", None)
    new, old = _flat(mine), _flat(theirs)
    changes = [f"{k}={v}" for k, v in new.items() if old.get(k) != v]
    removed = set()
    for key in old.keys() - new.keys():
        parts = key.split(".")
        # the shortest prefix of the key that nothing in the new recipe keeps
        top = next(".".join(parts[:i]) for i in range(1, len(parts) + 1)
                   if not any(k == ".".join(parts[:i]) or k.startswith(".".join(parts[:i]) + ".") for k in new))
        removed.add(f"~{top}")
    return changes + sorted(removed)
