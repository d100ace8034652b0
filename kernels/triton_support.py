"""Where the Triton kernels can run, and the small launch arithmetic they share.

The kernels run compiled on CUDA, or in Triton's interpreter on the CPU when TRITON_INTERPRET=1
was set before the kernel modules were imported (Triton reads it when a kernel is defined). So
the format folders import their `triton` modules lazily, at the first call, never from
`qrecipe.kernels` itself.
"""

from __future__ import annotations

import importlib.util
import os

import torch


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def can_run_triton(device: torch.device) -> bool:
    """True where a Triton kernel can run on tensors of this device."""
    if not triton_installed():
        return False
    return device.type == "cuda" or (device.type == "cpu" and interpreting())


def require_triton_device(op: str, t: torch.Tensor) -> None:
    if not can_run_triton(t.device):
        raise RuntimeError(f"{op} runs a Triton kernel, which needs CUDA tensors (or TRITON_INTERPRET=1 on the CPU); "
                           f"got a tensor on {t.device}: move the module to a GPU or let select_backend choose a "
                           f"CPU backend")


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()
