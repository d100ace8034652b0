"""Deployment targets (conf/target/): the hardware a variant is meant to serve on.

Gating is judged against the target, not against the machine that runs the quantization.
Capabilities follow from the compute capability: int8 tensor cores from 7.5, fp8 from 8.9.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from .errors import ConfigError

INT8_MIN_CC = 7.5
FP8_MIN_CC = 8.9
TARGET_FIELDS = ("name", "device", "gpu", "memory_gib", "compute_capability", "capabilities", "dtype",
                 "memory_utilization", "max_devices", "description")


@dataclass(frozen=True)
class Target:
    name: str
    device: str  # "cuda" or "cpu"
    gpu: str | None
    memory_gib: float  # per device (GPU memory, or host memory for cpu)
    compute_capability: float | None
    capabilities: frozenset[str]
    dtype: str  # the serving dtype of unquantized weights
    memory_utilization: float = 0.9
    max_devices: int = 8
    description: str = ""

    def lacks(self, needed: tuple[str, ...] | frozenset[str]) -> list[str]:
        return sorted(set(needed) - self.capabilities)


def capabilities_for(compute_capability: float | None) -> frozenset[str]:
    if compute_capability is None:
        return frozenset()
    caps = set()
    if compute_capability >= INT8_MIN_CC:
        caps.add("int8")
    if compute_capability >= FP8_MIN_CC:
        caps.add("fp8")
    return frozenset(caps)


def host_memory_gib() -> float:
    """This machine's memory; an error (never a guess) when it cannot be read."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError) as e:
        first = e
    try:
        import psutil

        return psutil.virtual_memory().total / 2**30
    except Exception as e:  # noqa: BLE001 - reported below with the first reason
        raise ConfigError(f"target.memory_gib: cannot read this machine's memory ({first}; psutil: {e}); set "
                          f"target.memory_gib=GIB") from None


def _gpu_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100': the name of the shipped target it is, when it is one."""
    lowered = name.lower()
    for known in ("h200", "h100", "a100", "l40s", "l4"):
        if known in lowered.split() or known in lowered.replace("-", " ").split():
            return known
    return "cuda-" + "-".join(lowered.replace("nvidia", "").split())


def detect_local() -> Target:
    """The machine this process runs on, as a target."""
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        cc = float(f"{props.major}.{props.minor}")
        return Target(name=_gpu_slug(props.name), device="cuda", gpu=props.name,
                      memory_gib=round(props.total_memory / 2**30, 1), compute_capability=cc,
                      capabilities=capabilities_for(cc), dtype="bfloat16",
                      max_devices=torch.cuda.device_count(), description="detected (target=auto)")
    # CPUs run int8 GEMMs natively (torch._int_mm); fp8 only through emulation.
    return Target(name="cpu", device="cpu", gpu=None, memory_gib=round(host_memory_gib(), 1),
                  compute_capability=None, capabilities=frozenset({"int8"}), dtype="float32", max_devices=1,
                  memory_utilization=0.8, description="detected (target=auto)")


def parse_target(node: Mapping[str, Any]) -> Target:
    if not isinstance(node, Mapping):
        raise ConfigError(f"target: expected a mapping, got {node!r}; choose one with target=h100|a100|l4|cpu|auto")
    for key in node:
        if key not in TARGET_FIELDS:
            raise ConfigError(f"target.{key}: unknown key; allowed keys are {', '.join(TARGET_FIELDS)}")
    if node.get("name") == "auto":
        return detect_local()
    try:
        caps = frozenset(node.get("capabilities") or [])
        bad = caps - {"int8", "fp8"}
        if bad:
            raise ConfigError(f"target.capabilities: unknown {sorted(bad)}; use int8 and/or fp8")
        memory = node.get("memory_gib")
        return Target(name=str(node["name"]), device=str(node.get("device", "cuda")), gpu=node.get("gpu"),
                      memory_gib=float(memory if memory is not None else host_memory_gib()),
                      compute_capability=(None if node.get("compute_capability") is None
                                          else float(node["compute_capability"])),
                      capabilities=caps, dtype=str(node.get("dtype", "bfloat16")),
                      memory_utilization=float(node.get("memory_utilization", 0.9)),
                      max_devices=int(node.get("max_devices", 8)), description=str(node.get("description", "")))
    except KeyError as e:
        raise ConfigError(f"target.{e.args[0]}: missing; every target names itself") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"target: invalid value ({e}); see conf/target/h100.yaml for the fields") from None
