"""How long `qrecipe plan` takes on a Llama-3-70B config.json (no weights), split into the
imports it needs and the resolution itself. Figures, not a test (bench/PLAN_SPEED.md).

    python3 bench/plan_speed.py [--repeats 7] [--json OUT]

Each repeat is a fresh process (imports are what a user pays on every command). The first plan
of a config reads its structure through transformers (an 80-layer skeleton on the meta device);
later plans of the same config read it from the structure cache (engine/models/structure_cache.py)
and import no transformers modeling code. Both are timed:
  startup        `python -c pass`: the interpreter alone, the floor of any command
  floor          importing torch and transformers' Llama classes alone: what any tool pays that
                 reads a model's structure through transformers
  imports        the modules `qrecipe plan` loads before it resolves (CLI, config, planning)
  resolve-cold   compose and validate the config, read the structure through transformers (its
                 imports included), resolve and render the plan: the first plan of this config
  resolve-warm   the same with the structure cached
  command-cold   the whole `qrecipe plan model=hf model.path=DIR target=h100`, empty cache
  command-warm   the same command again
  command-warm-cpu  its CPU seconds (user + system), less disturbed by other load
Reported as median and interquartile range over the repeats, with the machine's load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LLAMA_70B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu", "rms_norm_eps": 1e-5,
             "torch_dtype": "bfloat16", "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
             "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256,
             "tie_word_embeddings": False, "max_position_embeddings": 131072, "rope_theta": 500000.0}

FLOOR = "import torch, transformers.models.llama.modeling_llama"
PHASES = r"""
import json, sys, time
t0 = time.perf_counter()
from qrecipe.registry.cli import build_parser
from qrecipe.engine.config import compose, load_settings
from qrecipe.engine.plan.render import render_plan
from qrecipe.engine.planning import build_plan
t1 = time.perf_counter()
build_parser()
plan, _ = build_plan(load_settings(compose(["model=hf", "model.path=" + sys.argv[1], "target=h100"])))
text = render_plan(plan)
t2 = time.perf_counter()
print(json.dumps({"imports": t1 - t0, "resolve": t2 - t1, "layers": len(plan.layers)}))
"""


def _timed(cmd: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of the command."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} exited with {proc.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


def _stats(xs: list[float]) -> dict:
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return {"median_s": statistics.median(xs), "iqr_s": q[2] - q[0], "n": len(xs)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="qrecipe-plan70b-"))
    (folder / "config.json").write_text(json.dumps(LLAMA_70B))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "QRECIPE_HOME": str(folder / "home")}
    qrecipe = str(Path(sys.executable).with_name("qrecipe"))
    plan_cmd = [qrecipe, "plan", "model=hf", f"model.path={folder}", "target=h100"]
    names = ("startup", "floor", "imports", "resolve-cold", "resolve-warm", "command-cold", "command-warm",
             "command-warm-cpu")
    runs: dict[str, list[float]] = {name: [] for name in names}
    load = os.getloadavg()
    for i in range(args.repeats):  # interleaved, so drift hits every figure alike
        runs["startup"].append(_timed([sys.executable, "-c", "pass"], env)[0])
        runs["floor"].append(_timed([sys.executable, "-c", FLOOR], env)[0])
        cold = {**env, "QRECIPE_CACHE": str(folder / f"cache-cold-{i}")}
        warm = {**env, "QRECIPE_CACHE": str(folder / "cache-warm")}
        for which, e in (("cold", cold), ("warm", warm)):
            out = subprocess.run([sys.executable, "-c", PHASES, str(folder)], check=True, env=e, capture_output=True,
                                 text=True).stdout
            phases = json.loads(out.strip().splitlines()[-1])
            runs[f"resolve-{which}"].append(phases["resolve"])
            if which == "warm":
                runs["imports"].append(phases["imports"])
        runs["command-cold"].append(_timed(plan_cmd, {**env, "QRECIPE_CACHE": str(folder / f"cache-cmd-{i}")})[0])
        wall, cpu = _timed(plan_cmd, warm)
        runs["command-warm"].append(wall)
        runs["command-warm-cpu"].append(cpu)
    result = {name: _stats(xs) for name, xs in runs.items()}
    result["load_average_before"] = load
    result["load_average_after"] = os.getloadavg()
    result["cpus"] = os.cpu_count()
    for name in runs:
        r = result[name]
        print(f"{name:<16} {r['median_s']:6.2f} s median, IQR {r['iqr_s']:.2f} s over {r['n']} runs")
    print(f"load average before {load[0]:.2f}, after {result['load_average_after'][0]:.2f} on {os.cpu_count()} CPUs")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
