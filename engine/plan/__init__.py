"""The plan: per-layer decisions as plain data, resolved without loading weights."""

from .types import LayerPlan, Plan
from .resolve import resolve_plan

__all__ = ["LayerPlan", "Plan", "resolve_plan"]
