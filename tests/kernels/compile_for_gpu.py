"""Compile the Triton kernels for a GPU that this machine need not have (Triton ships ptxas):
`python compile_for_gpu.py 90` prints one JSON line per kernel variant. Run in a process of
its own, without TRITON_INTERPRET, by test_compiles_for_gpu.py; usable by hand to check a
Triton version (e.g. the GPU image's 3.6) before a device run."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "0"

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from load_kernels import load_kernels  # noqa: E402  (qrecipe.kernels, installed or not)

load_kernels()
from qrecipe.kernels import act_quant_triton, scaled_mm_triton, tuning, weight_only_triton  # noqa: E402

_PTR = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32", torch.uint8: "*u8",
        torch.int8: "*i8", torch.float8_e4m3fn: "*fp8e4nv"}


def compile_variant(kernel, args: dict, consts: dict, capability: int, num_warps: int, num_stages: int):
    sig, constexprs, attrs = {}, {}, {}
    for i, p in enumerate(kernel.params):
        if p.is_constexpr:
            sig[p.name], constexprs[p.name] = "constexpr", consts[p.name]
            continue
        v = args.get(p.name, 1)
        sig[p.name] = _PTR[v] if isinstance(v, torch.dtype) else "i32"
        # what a launch on real tensors tells Triton: 16-byte aligned pointers, sizes and strides
        # divisible by 16 (it allows wide, pipelined loads)
        attrs[(i,)] = [["tt.divisibility", 16]]
    return triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=constexprs, attrs=attrs),
                          target=GPUTarget("cuda", capability, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages})


def variants(capability: int):
    """(name, kernel, pointer dtypes, constexprs, warps, stages): decode and prefill tiles of each."""
    for dtype in (torch.float16, torch.bfloat16):
        for bits, group, asym in ((4, 128, True), (4, 0, False), (8, 0, False), (8, 64, True)):
            code = torch.uint8 if bits == 4 else torch.int8
            for tile in (tuning_tile(1), tuning_tile(4096)):
                yield (f"w{bits}a16-{str(dtype)[6:]}-g{group}-{'asym' if asym else 'sym'}-m{tile.block_m}",
                       weight_only_triton._weight_only_kernel,
                       dict(x_ptr=dtype, qw_ptr=code, s_ptr=torch.float16, z_ptr=code, bias_ptr=dtype, out_ptr=dtype),
                       dict(GROUP=group, BITS=bits, HAS_ZERO=asym, HAS_BIAS=True, SPLIT=tile.split_k != 1,
                            BLOCK_M=tile.block_m, BLOCK_N=tile.block_n, BLOCK_K=min(tile.block_k, group or 4096)),
                       tile.num_warps, tile.num_stages)
    eight_bit = [torch.int8] + ([torch.float8_e4m3fn] if capability >= 89 else [])
    for act in eight_bit:
        for tile in (scaled_tile(16), scaled_tile(4096)):
            yield (f"scaled-mm-{str(act)[6:]}-m{tile.block_m}", scaled_mm_triton._scaled_mm_kernel,
                   dict(a_ptr=act, b_ptr=act, sa_ptr=torch.float32, sb_ptr=torch.float32, bias_ptr=torch.bfloat16,
                        out_ptr=torch.bfloat16),
                   dict(PER_TOKEN=True, HAS_BIAS=True, IS_INT8=act == torch.int8, ZERO=0 if act == torch.int8 else 0.0,
                        BLOCK_M=tile.block_m,
                        BLOCK_N=tile.block_n, BLOCK_K=tile.block_k), tile.num_warps, tile.num_stages)
        yield (f"act-quant-{str(act)[6:]}", act_quant_triton._per_token_quant_kernel,
               dict(x_ptr=torch.bfloat16, q_ptr=act, s_ptr=torch.float32),
               dict(QMAX=127.0 if act == torch.int8 else 448.0, STATIC=False, TO_INT8=act == torch.int8,
                    BLOCK_K=4096), 8, 1)


def tuning_tile(m):
    return tuning.candidates(tuning.WEIGHT_ONLY, m)[0]


def scaled_tile(m):
    return tuning.candidates(tuning.SCALED_MM, m)[0]


def main(capability: int) -> None:
    for name, kernel, args, consts, warps, stages in variants(capability):
        try:
            c = compile_variant(kernel, args, consts, capability, warps, stages)
            ptx = c.asm["ptx"]
            mma = "wgmma" if "wgmma" in ptx else "mma" if "mma.sync" in ptx else "none"
            print(json.dumps({"name": name, "ok": True, "mma": mma, "shared": c.metadata.shared,
                              "triton": triton.__version__}), flush=True)
        except Exception as e:  # report and go on: the test lists every failure
            print(json.dumps({"name": name, "ok": False, "error": f"{type(e).__name__}: {e}"[-1500:]}), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 90)
