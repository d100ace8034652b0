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

import itertools
import os
import re
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError
from ..recipe import POLICY_FIELDS_FOR_OVERRIDE
from .resolvers import register_resolvers

_registered: dict[str, Path] = {}


def conf_dir() -> Path:
    import qrecipe.conf

    return Path(qrecipe.conf.__file__).resolve().parent


def recipe_dirs() -> list[Path]:
    """recipes/ shipped with qrecipe, then folders in $QRECIPE_RECIPE_PATH (os.pathsep-separated)."""
    import qrecipe.recipes

    dirs = [Path(qrecipe.recipes.__file__).resolve().parent]
    for extra in filter(None, os.environ.get("QRECIPE_RECIPE_PATH", "").split(os.pathsep)):
        dirs.append(Path(extra).expanduser().resolve())
    return dirs


def available_recipes() -> list[str]:
    names = set()
    for d in recipe_dirs():
        names.update(p.stem for p in d.glob("*.yaml"))
    return sorted(names)


def register_recipes() -> None:
    """Register every recipe file in the ConfigStore group `recipe` (later folders win)."""
    cs = ConfigStore.instance()
    for d in recipe_dirs():
        for path in sorted(d.glob("*.yaml")):
            node = OmegaConf.load(path)
            cs.store(group="recipe", name=path.stem, node=node, provider="qrecipe")
            _registered[path.stem] = path


_PARSER = None


def _parser() -> OverridesParser:
    global _PARSER
    if _PARSER is None:
        _PARSER = OverridesParser.create()
    return _PARSER


def parse_overrides(overrides: list[str]):
    try:
        return _parser().parse_overrides(list(overrides))
    except OverrideParseException as e:
        first = str(e).strip().splitlines()[0]
        raise ConfigError(f"cannot parse override: {first}; quote values with special characters, e.g. "
                          f"'recipe.rules.attn.match=\"re:.*self_attn\\..*\"'") from None


_RULE_FIELD = re.compile(r"^recipe\.(base|rules\.[^.]+)\.((" + "|".join(POLICY_FIELDS_FOR_OVERRIDE) + r")|args\.[^.]+)$"
                         r"|^recipe\.(overlap|tied_embeddings|ignore|description)$")


def normalize_overrides(overrides: list[str]) -> list[str]:
    """`recipe.rules.R.F=V`, `recipe.base.F=V` and recipe-level fields a recipe may leave
    out (`recipe.overlap=...`) -> `++...`: add or override."""
    out = []
    for ov, text in zip(parse_overrides(overrides), overrides):
        if ov.type == OverrideType.CHANGE and ov.package is None and _RULE_FIELD.match(ov.key_or_group):
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


_RECIPE_FILE = re.compile(r"^recipe=(.+\.ya?ml)$")


def recipe_files(overrides: list[str]) -> list[str]:
    """`recipe=PATH.yaml` (a recipe file anywhere, e.g. one `qrecipe search` wrote) -> the file
    registered in the group under its stem, and the override rewritten to `recipe=STEM`."""
    out = []
    for text in overrides:
        m = _RECIPE_FILE.match(text)
        if m:
            path = Path(m.group(1)).expanduser()
            if not path.is_file():
                raise ConfigError(f"recipe={m.group(1)}: no such recipe file; pass an existing .yaml file or a recipe "
                                  f"name ({', '.join(available_recipes())})")
            ConfigStore.instance().store(group="recipe", name=path.stem, node=OmegaConf.load(path), provider="qrecipe")
            _registered[path.stem] = path.resolve()
            text = f"recipe={path.stem}"
        out.append(text)
    return out


def compose(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The composed config for these overrides (Hydra's compose API: no output folders, no cwd change)."""
    register_resolvers()
    register_recipes()
    overrides = normalize_overrides(recipe_files(list(overrides)))
    for ov in parse_overrides(overrides):
        key = ov.key_or_group
        if key == "hydra" or key.startswith(("hydra.", "hydra/")) or ov.package and ov.package.startswith("hydra"):
            raise ConfigError(f"{key}: hydra.* settings are not part of a qrecipe config; remove the override")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3", job_name="qrecipe"):
            return hydra_compose(config_name="config", overrides=overrides)
    except (ConfigCompositionException, MissingConfigException, OverrideParseException) as e:
        raise _translate(e, overrides) from None
    finally:
        GlobalHydra.instance().clear()
