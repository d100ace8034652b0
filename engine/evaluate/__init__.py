"""Quality measurements of a model against its baseline on the same tokens."""

from .perplexity import PerplexityResult, perplexity

__all__ = ["PerplexityResult", "perplexity"]
