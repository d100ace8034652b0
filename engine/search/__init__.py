"""`qrecipe search`: the cheapest per-layer mix of candidates that meets a budget, from measured
per-unit sensitivities, allocated exactly and written as a recipe (search.py)."""

from .cache import CacheScope, MemoryCache, SensitivityCache
from .search import Point, Prepared, SearchResult, find, measure_points, pareto, prepare

__all__ = ["CacheScope", "MemoryCache", "Point", "Prepared", "SearchResult", "SensitivityCache", "find",
           "measure_points", "pareto", "prepare"]
