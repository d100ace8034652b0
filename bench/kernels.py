"""Kernel benchmark: each quantized linear kernel against the dense baselines, same process,
same device. Figures, not tests (bench/RESULTS.md records them).

GPU (needs only torch and triton; qrecipe need not be installed):
    python bench/kernels.py --json out.json            # add --autotune to time the tile candidates
CPU (the engine's CPU backends through QuantLinear; needs qrecipe installed):
    python bench/kernels.py --device cpu --json out.json

Shapes are in_features x out_features (K x N); y[M, N] = x[M, K] W[N, K]^T. Every timing is the
median of do_bench's repetitions, which zeroes a 256 MB buffer before each one so weights come
from HBM, not L2. Bytes moved = packed weights (with scales and zeros) + x + y, read or written
once; GB/s and % of peak use them, TFLOP/s uses 2*M*N*K.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_kernels import load_kernels  # noqa: E402

kernels = load_kernels()
from qrecipe.kernels import QuantizedWeight, QuantParams, get_format, tuning  # noqa: E402
from qrecipe.kernels.ops import triton_linear  # noqa: E402

GPU_SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096), (8192, 8192), (8192, 28672), (28672, 8192)]
GPU_MS = [1, 16, 64, 256, 2048]
CPU_SHAPES = [(1024, 1024), (1024, 2816), (2816, 1024)]
CPU_MS = [1, 16, 64]
PEAK_GBPS = {"H100": 3350.0, "H200": 4800.0, "A100": 2039.0, "L4": 300.0}  # datasheet HBM/GDDR bandwidth

# name -> (format, params) of the quantized variants
VARIANTS = {
    "w4a16-g128": ("w4a16", QuantParams(group_size=128, symmetric=False)),
    "w8a16": ("w8a16", QuantParams(group_size=None)),
    "w8a8-dynamic": ("w8a8", QuantParams(activation="dynamic")),
    "fp8-dynamic": ("fp8", QuantParams(activation="dynamic")),
}


def random_buffers(fmt_name: str, p: QuantParams, n: int, k: int, device) -> dict[str, torch.Tensor]:
    fmt = get_format(fmt_name)
    g = p.groups(k)
    if fmt_name == "fp8":
        q = (torch.randn(n, k, device=device) * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
    else:
        q = torch.randint(0, 2 ** fmt.weight_bits, (n, k), device=device)
    scale = torch.rand(n, g if fmt.activation_dtype == "float" else 1, device=device) * 1e-3 + 1e-4
    zero = None if p.symmetric else torch.randint(0, 2 ** fmt.weight_bits, (n, g), device=device)
    return fmt.pack(QuantizedWeight(q=q, scale=scale, zero=zero), p)


def time_gpu(fn) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=10, rep=40, return_mode="median") * 1e3  # µs


def time_cpu(fn, reps: int = 20) -> float:
    fn()
    samples = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1e6


def row(name, m, k, n, us, nbytes, base_us, peak):
    return {"kernel": name, "M": m, "K": k, "N": n, "us": us, "GB/s": nbytes / us / 1e3 if us else None,
            "%peak": 100 * nbytes / us / 1e3 / peak if us and peak else None,
            "TFLOP/s": 2 * m * n * k / us / 1e6 if us else None, "x_vs_dense": base_us / us if us else None}


def gpu_rows(shapes, ms, dense_dtype, peak):
    dev = torch.device("cuda")
    fp8 = torch.cuda.get_device_capability() >= (8, 9)
    for k, n in shapes:
        w = torch.randn(n, k, device=dev, dtype=dense_dtype)
        w8 = torch.randint(-127, 128, (n, k), device=dev, dtype=torch.int8)
        bufs = {v: random_buffers(f, p, n, k, dev) for v, (f, p) in VARIANTS.items() if f != "fp8" or fp8}
        for m in ms:
            x = torch.randn(m, k, device=dev, dtype=dense_dtype)
            io = (m * k + m * n) * x.element_size()
            base = time_gpu(lambda: F.linear(x, w))
            yield row(f"{str(dense_dtype)[6:]} F.linear", m, k, n, base, w.numel() * w.element_size() + io, base, peak)
            x8 = torch.randint(-127, 128, (max(m, 17), k), device=dev, dtype=torch.int8)  # _int_mm needs M > 16
            us = time_gpu(lambda: torch._int_mm(x8, w8.T))
            yield row("torch._int_mm (GEMM only, M padded to 17)" if m <= 16 else "torch._int_mm (GEMM only)",
                         m, k, n, us, w8.numel() + io, base, peak)
            if fp8:
                a8, b8 = x.to(torch.float8_e4m3fn), w.to(torch.float8_e4m3fn)
                sa, sb = torch.ones(m, 1, device=dev), torch.ones(1, n, device=dev)
                us = time_gpu(lambda: torch._scaled_mm(a8, b8.T, scale_a=sa, scale_b=sb, out_dtype=dense_dtype))
                yield row("torch._scaled_mm rowwise (GEMM only)", m, k, n, us, b8.numel() + io, base, peak)
            for v, b in bufs.items():
                fmt, p = VARIANTS[v]
                us = time_gpu(lambda: triton_linear(fmt, x, b, p.group_size, None))
                yield row(f"triton {v}", m, k, n, us, sum(t.numel() * t.element_size() for t in b.values()) + io,
                          base, peak)
        del w, w8, bufs
        torch.cuda.empty_cache()


def cpu_rows(shapes, ms):
    from torch import nn

    from qrecipe.engine.backends import BACKENDS
    from qrecipe.engine.modules import QuantLinear
    from qrecipe.engine.quant.rtn import rtn_quantize
    from qrecipe.engine.schemes import SCHEMES

    cases = [("W4A16", QuantParams(128, symmetric=False)), ("W8A16", QuantParams(None)),
             ("W8A8", QuantParams(None, activation="dynamic"))]
    for k, n in shapes:
        lin = nn.Linear(k, n, bias=False)
        for dtype in (torch.bfloat16, torch.float32):
            name = str(dtype)[6:]
            for m in ms:
                x = torch.randn(m, k, dtype=dtype)
                io = (m * k + m * n) * x.element_size()
                dense = nn.Linear(k, n, bias=False).to(dtype)
                base = time_cpu(lambda: dense(x))
                yield row(f"{name} F.linear", m, k, n, base, k * n * x.element_size() + io, base, None)
                for scheme, p in cases:
                    q = QuantLinear.from_quantized(lin, scheme, p, rtn_quantize(lin.weight.data, SCHEMES[scheme], p))
                    for backend in BACKENDS:
                        if backend.name == "emulated" or not backend.supports(q.format, p, k, n, torch.device("cpu"), dtype):
                            continue
                        q.backend = backend
                        backend.prepare(q)
                        us = time_cpu(lambda: q(x))
                        yield row(f"{backend.name} {scheme.lower()} ({name} x)", m, k, n, us, q.weight_nbytes() + io,
                                  base, None)


def table(rows) -> str:
    cols = ["kernel", "M", "K", "N", "us", "GB/s", "%peak", "TFLOP/s", "x_vs_dense"]
    fmt = lambda v: "-" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = [cols] + [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(cols))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    ap.add_argument("--json", type=Path, help="also write the rows (and the device) as JSON here")
    ap.add_argument("--autotune", action="store_true", help="time each tile candidate once per shape (tuning.py)")
    ap.add_argument("--quick", action="store_true", help="first shape and two M values only (a smoke run)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"], help="GPU activation dtype")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads (1: on a shared machine, more threads wait on each other's time slices)")
    args = ap.parse_args(argv)
    if args.autotune:
        import os

        os.environ["QRECIPE_TRITON_AUTOTUNE"] = "1"
    if args.device == "cuda":
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_GBPS.items() if k in name), None)
        shapes, ms = (GPU_SHAPES[:1], GPU_MS[:2]) if args.quick else (GPU_SHAPES, GPU_MS)
        device = {"name": name, "capability": list(torch.cuda.get_device_capability()), "peak_GBps": peak}
        rows = []
        for r in gpu_rows(shapes, ms, getattr(torch, args.dtype), peak):
            rows.append(r)
            print(table([r]).splitlines()[1], flush=True)
    else:
        torch.set_num_threads(args.threads)
        shapes, ms = (CPU_SHAPES[:1], CPU_MS[:2]) if args.quick else (CPU_SHAPES, CPU_MS)
        import platform

        device = {"name": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                  "cpu_capability": torch.backends.cpu.get_cpu_capability()}
        rows = list(cpu_rows(shapes, ms))
    versions = {"torch": torch.__version__}
    try:
        import triton

        versions["triton"] = triton.__version__
    except ImportError:
        pass
    print(f"\n{device}  {versions}\n" + table(rows))
    if args.json:
        args.json.write_text(json.dumps({"device": device, "versions": versions, "rows": rows,
                                         "tuned": tuning.tuned_as_json()}, indent=1))


if __name__ == "__main__":
    main()
