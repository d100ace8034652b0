"""A model bigger than this machine's memory, quantized streamed: wall time, peak RSS read from
outside the process, output bytes and time per block.

The model is synthetic (bench/synthetic_llama.py), shaped like Llama-3-8B: hidden 4096, 32
blocks, intermediate 14336, GQA 32/8, vocab 128256, bf16 (15 GiB on disk; its float32 copy,
30 GiB, cannot be held in 24 GiB). It is generated once into bench/.cache/ (git-ignored).
Each run is a child process (`--child`) doing only the streamed quantization into a
checkpoint (engine/streaming/execute.py quantize_to_checkpoint); the parent polls the child's
/proc/PID/status every 50 ms and reports its VmHWM (peak resident memory, file-backed pages
of the mapped checkpoint included) and its RSS after imports and planning.

    nice -n 10 .venv/bin/python bench/big_model.py rtn                   # W4A16 g128, RTN
    nice -n 10 .venv/bin/python bench/big_model.py gptq --gptq-blocks 2   # GPTQ on 2 blocks, RTN on the rest
    python bench/big_model.py gptq --device cuda --samples 256 --seq-len 2048   # on a GPU: GPTQ on every block

`--gptq-blocks N` applies GPTQ to the first N blocks only (the calibration activations then
run through those N blocks) and RTN to the rest, for machines where GPTQ on all 32 blocks
takes hours; the time per GPTQ block is printed so the full run can be extrapolated (the
extrapolation is labelled as such). Figures: bench/BIG_MODEL.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
SHAPE = dict(hidden=4096, layers=32, intermediate=14336, heads=32, kv_heads=8, vocab=128256, dtype="bfloat16")


def _status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


def _overrides(args, model: Path, work: Path) -> list[str]:
    o = ["model=hf", f"model.path={model}", "model.name=synthetic-llama3-8b", "model.dtype=bfloat16",
         f"target={'cpu' if args.device == 'cpu' else 'h100'}", f"run.device={args.device}", "run.streaming=always",
         f"run.resume_dir={work / 'resume'}", f"paths.root={work / 'root'}", "recipe=w4a16",
         "recipe.base.group_size=128", f"run.activation_budget_gib={args.activation_budget}"]
    if args.recipe == "gptq":
        o += ["data@calib.data=c4", f"calib.samples={args.samples}", f"calib.seq_len={args.seq_len}",
              f"calib.batch_size={min(args.samples, 8)}"]
        blocks = "|".join(str(i) for i in range(args.gptq_blocks if args.gptq_blocks else SHAPE["layers"]))
        o += [f'+recipe.rules.gptq.match="re:model\\.layers\\.({blocks})\\..*"', "+recipe.rules.gptq.algorithm=gptq",
              "+recipe.rules.gptq.group_size=128"]
    return o


def child(request: dict) -> None:
    """In the child: plan, then quantize streamed; the last stdout line is JSON."""
    import torch

    from qrecipe.engine.config import compose, load_settings
    from qrecipe.engine.models.loading import resolve_dtype
    from qrecipe.engine.planning import build_plan
    from qrecipe.engine.plan.render import render_plan
    from qrecipe.engine.streaming import quantize_to_checkpoint

    settings = load_settings(compose(request["overrides"]))
    device = torch.device(settings.run.device)
    plan, _ = build_plan(settings, device)
    print("\n".join(render_plan(plan).splitlines()[-4:]), file=sys.stderr, flush=True)
    dtype = resolve_dtype(settings.model.dtype, device)
    print(json.dumps({"event": "planned", "rss": _status(os.getpid())["VmRSS"]}), flush=True)
    start = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    report = quantize_to_checkpoint(settings, plan, Path(request["out"]), device, dtype,
                                    lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps({"event": "done", "seconds": time.perf_counter() - start, "block_seconds": report.block_seconds,
                      "cuda_peak": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
                      "estimate": plan.execution, "notes": report.notes}), flush=True)


def run(args, model: Path) -> dict:
    work = CACHE / f"run-{args.recipe}"
    shutil.rmtree(work, ignore_errors=True)
    out = work / "checkpoint"
    cmd = [sys.executable, __file__, "--child", json.dumps({"overrides": _overrides(args, model, work),
                                                             "out": str(out)})]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    peak, peak_at = 0, 0.0
    while proc.poll() is None:
        try:
            st = _status(proc.pid)
        except (FileNotFoundError, ProcessLookupError):
            break
        if st.get("VmHWM", 0) > peak:
            peak, peak_at = st["VmHWM"], time.monotonic() - start
        time.sleep(0.05)
    lines = [json.loads(line) for line in proc.stdout.read().splitlines() if line.startswith("{")]
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"the child failed with exit code {proc.returncode}")
    events = {e["event"]: e for e in lines}
    done = events["done"]
    output = sum(f.stat().st_size for f in out.iterdir() if f.suffix == ".safetensors")
    result = {"recipe": args.recipe, "device": args.device, "threads": os.environ.get("OMP_NUM_THREADS"),
              "gptq_blocks": args.gptq_blocks if args.recipe == "gptq" else None,
              "calib": f"{args.samples} x {args.seq_len}" if args.recipe == "gptq" else None,
              "wall_seconds": wall, "quantize_seconds": done["seconds"], "peak_rss_bytes": peak,
              "peak_reached_at_seconds": peak_at,
              "rss_after_plan_bytes": events["planned"]["rss"], "output_bytes": output,
              "block_seconds": done["block_seconds"], "cuda_peak_bytes": done["cuda_peak"],
              "estimated_peak_host_bytes": done["estimate"]["peak_host_bytes"],
              "estimated_peak_device_bytes": done["estimate"]["peak_device_bytes"], "notes": done["notes"]}
    shutil.rmtree(work, ignore_errors=True)
    return result


def report(r: dict) -> str:
    gib = 2**30
    bs = r["block_seconds"]
    lines = [f"{r['recipe']} on {r['device']}: wall {r['wall_seconds']:.0f}s (quantize {r['quantize_seconds']:.0f}s), "
             f"peak RSS {r['peak_rss_bytes'] / gib:.2f} GiB at {r.get('peak_reached_at_seconds', 0):.0f}s (after imports "
             f"and plan {r['rss_after_plan_bytes'] / gib:.2f} GiB; estimated peak host "
             f"{r['estimated_peak_host_bytes'] / gib:.2f} GiB), output "
             f"{r['output_bytes'] / gib:.2f} GiB",
             f"  per block: median {sorted(bs)[len(bs) // 2]:.1f}s, min {min(bs):.1f}s, max {max(bs):.1f}s "
             f"over {len(bs)} blocks"]
    if r["gptq_blocks"]:
        g = bs[:r["gptq_blocks"]]
        rest = bs[r["gptq_blocks"]:]
        lines.append(f"  GPTQ blocks (calib {r['calib']}): {', '.join(f'{s:.0f}s' for s in g)}; EXTRAPOLATED, not "
                     f"measured: GPTQ on all {len(bs)} blocks ~{sum(g) / len(g) * len(bs) / 60:.0f} min"
                     + (f" (RTN blocks here: median {sorted(rest)[len(rest) // 2]:.1f}s)" if rest else ""))
    if r["cuda_peak_bytes"]:
        lines.append(f"  peak CUDA memory {r['cuda_peak_bytes'] / gib:.2f} GiB "
                     f"(estimated {r['estimated_peak_device_bytes'] / gib:.2f} GiB)")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(json.loads(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("recipe", choices=["rtn", "gptq"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--samples", type=int, default=8, help="GPTQ calibration windows")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--gptq-blocks", type=int, default=0, help="GPTQ on the first N blocks only (0: all)")
    ap.add_argument("--activation-budget", type=float, default=4.0, help="run.activation_budget_gib (host GiB)")
    ap.add_argument("--json", type=Path, help="append the result as one JSON line to this file")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from synthetic_llama import build, llama_config

    t = time.monotonic()
    model = build(CACHE / "llama3-8b-shaped-bf16", llama_config(**SHAPE), shard_bytes=2 << 30)
    print(f"model: {model} ({time.monotonic() - t:.0f}s to build or find)", file=sys.stderr)
    r = run(args, model)
    print(report(r))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
