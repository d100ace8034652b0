"""W4A16: 4-bit integer weights (group-wise or per-channel), 16-bit activations."""

from .pack import FORMAT, pack_int4, unpack_int4

__all__ = ["FORMAT", "pack_int4", "unpack_int4"]
