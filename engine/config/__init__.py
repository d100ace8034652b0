"""Composition of the Hydra config (with recipes registered as the group `recipe`) and its
validation into frozen settings."""

from .compose import compose, expand_sweep, normalize_overrides
from .recipes import available_recipes
from .settings import Settings, load_settings

__all__ = ["Settings", "available_recipes", "compose", "expand_sweep", "load_settings", "normalize_overrides"]
