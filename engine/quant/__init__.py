"""Quantization math as short pure functions (scales, codes, round-to-nearest)."""
