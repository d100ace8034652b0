"""Deployment targets (conf/target/): the hardware a variant is meant to serve on.

Gating is judged against the target, not against the machine that runs the quantization.
Capabilities follow from the compute capability: int8 tensor cores from 7.5, fp8 from 8.9.

A target may state its roofline: peak memory bandwidth (`bandwidth_gb_s`, GB/s = 1e9 bytes/s)
and dense (not 2:4-sparse) tensor throughput per math type (`dense_tflops`: bf16, fp16, fp32,
int8 (TOPS) and fp8), from the vendor's data sheet. engine/plan/roofline.py turns them into
predicted decode and prefill speeds; a target without them (cpu, or auto on a GPU that is not
a shipped target) gets no prediction rather than an invented one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from .errors import ConfigError

INT8_MIN_CC = 7.5
FP8_MIN_CC = 8.9
TARGET_FIELDS = ("name", "device", "gpu", "memory_gib", "compute_capability", "capabilities", "dtype",
                 "memory_utilization", "max_devices", "description", "bandwidth_gb_s", "dense_tflops")
MATH_TYPES = ("bf16", "fp16", "fp32", "int8", "fp8")


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
    bandwidth_gb_s: float | None = None  # peak memory bandwidth per device (data sheet)
    dense_tflops: dict[str, float] = field(default_factory=dict)  # math type -> dense TFLOPS (TOPS for int8)

    def lacks(self, needed: tuple[str, ...] | frozenset[str]) -> list[str]:
        return sorted(set(needed) - self.capabilities)

    def is_device(self, device_type: str, device_name: str) -> bool:
        """Whether a measurement on this device (type, name as torch reports it) ran on this
        target's kind of hardware: the same GPU model, or a CPU for a CPU target."""
        if self.device == "cpu":
            return device_type == "cpu"
        return device_type == "cuda" and self.gpu is not None and device_name == self.gpu


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


def shipped_roofline(gpu_name: str) -> tuple[float | None, dict[str, float]]:
    """The data-sheet roofline of the shipped target (conf/target/) whose `gpu` is this exact
    name, so target=auto on an H100 SXM predicts like target=h100; (None, {}) for others."""
    from omegaconf import OmegaConf

    from .config.compose import conf_dir

    for path in sorted((conf_dir() / "target").glob("*.yaml")):
        node = OmegaConf.to_container(OmegaConf.load(path))
        if isinstance(node, dict) and node.get("gpu") == gpu_name and node.get("bandwidth_gb_s"):
            return float(node["bandwidth_gb_s"]), {k: float(v) for k, v in (node.get("dense_tflops") or {}).items()}
    return None, {}


def detect_local() -> Target:
    """The machine this process runs on, as a target."""
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        cc = float(f"{props.major}.{props.minor}")
        bandwidth, tflops = shipped_roofline(props.name)
        return Target(name=_gpu_slug(props.name), device="cuda", gpu=props.name,
                      memory_gib=round(props.total_memory / 2**30, 1), compute_capability=cc,
                      capabilities=capabilities_for(cc), dtype="bfloat16",
                      max_devices=torch.cuda.device_count(), description="detected (target=auto)",
                      bandwidth_gb_s=bandwidth, dense_tflops=tflops)
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
    bandwidth, tflops = _roofline_fields(node)
    if node.get("name") == "auto":
        local = detect_local()  # figures set on the command line win over the shipped ones
        return replace(local, bandwidth_gb_s=bandwidth if bandwidth is not None else local.bandwidth_gb_s,
                       dense_tflops={**local.dense_tflops, **tflops})
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
                      max_devices=int(node.get("max_devices", 8)), description=str(node.get("description", "")),
                      bandwidth_gb_s=bandwidth, dense_tflops=tflops)
    except KeyError as e:
        raise ConfigError(f"target.{e.args[0]}: missing; every target names itself") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"target: invalid value ({e}); see conf/target/h100.yaml for the fields") from None


def _roofline_fields(node: Mapping[str, Any]) -> tuple[float | None, dict[str, float]]:
    bandwidth = node.get("bandwidth_gb_s")
    if bandwidth is not None and (isinstance(bandwidth, bool) or not isinstance(bandwidth, (int, float))
                                  or bandwidth <= 0):
        raise ConfigError(f"target.bandwidth_gb_s: expected the peak memory bandwidth in GB/s (a positive number) "
                          f"or null, got {bandwidth!r}")
    tflops = node.get("dense_tflops") or {}
    if not isinstance(tflops, Mapping):
        raise ConfigError(f"target.dense_tflops: expected a mapping such as {{bf16: 989.4, int8: 1978.9}}, got {tflops!r}")
    out = {}
    for key, value in tflops.items():
        if key not in MATH_TYPES:
            raise ConfigError(f"target.dense_tflops.{key}: unknown math type; use {', '.join(MATH_TYPES)}")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"target.dense_tflops.{key}: expected dense TFLOPS (TOPS for int8) as a positive "
                              f"number or null, got {value!r}")
        out[str(key)] = float(value)
    return (None if bandwidth is None else float(bandwidth)), out
