"""FP8 (E4M3): per-channel scaled fp8 weights, fp8 activations (dynamic per-token or static)."""

from .pack import FORMAT

__all__ = ["FORMAT"]
