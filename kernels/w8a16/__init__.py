"""W8A16: 8-bit integer weights (group-wise or per-channel), 16-bit activations."""

from .pack import FORMAT

__all__ = ["FORMAT"]
