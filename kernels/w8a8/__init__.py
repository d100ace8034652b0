"""W8A8 INT8: symmetric per-channel int8 weights, int8 activations (dynamic per-token or static)."""

from .pack import FORMAT

__all__ = ["FORMAT"]
