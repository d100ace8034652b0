"""Calibration algorithms on SmolLM2-135M: qrecipe against llm-compressor.

    .venv/bin/python bench/algorithms.py [--samples 32] [--seq-len 512] [--eval-windows 40]
        [--only CONFIG,...] [--no-llmc]

Calibration: `--samples` windows of `--seq-len` tokens of the C4 train jsonl, drawn by
qrecipe's sampler (calib.seed 0); the same token windows are handed to llm-compressor.
Perplexity: the first `--eval-windows` windows of 512 tokens of WikiText-2 test, each
scored on its own (qrecipe's protocol; bench/_measure.py holds the one copy both use).
Every configuration runs in its own process, so wall time and peak resident memory
(polled during quantization only) are its own. llm-compressor runs from a separate
environment, bench/.venv-llmc (see bench/ALGORITHMS.md for how it is made); without it
only qrecipe's rows are measured. Results go to bench/algorithms.json; the table is printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
LLMC_PYTHON = HERE / ".venv-llmc" / "bin" / "python"

W4 = ["recipe=w4a16", "recipe.base.group_size=64"]
ASYM = ["recipe.base.symmetric=false"]
W8A8 = ["recipe=w8a8"]
STATIC = ["recipe.base.activation=static"]
SQ = ["recipe.base.algorithm=smoothquant", "recipe.base.args.alpha=0.5"]
CONFIGS: dict[str, tuple[str, list[str]]] = {
    "rtn_w4a16": ("RTN W4A16 g64", W4),
    "rtn_w4a16_asym": ("RTN W4A16 g64 asym", W4 + ASYM),
    "awq_w4a16": ("AWQ W4A16 g64", W4 + ["recipe.base.algorithm=awq"]),
    "awq_w4a16_asym": ("AWQ W4A16 g64 asym", W4 + ASYM + ["recipe.base.algorithm=awq"]),
    "gptq_w4a16": ("GPTQ W4A16 g64", W4 + ["recipe.base.algorithm=gptq"]),
    "gptq_w4a16_asym": ("GPTQ W4A16 g64 asym", W4 + ASYM + ["recipe.base.algorithm=gptq"]),
    # qrecipe's combinations (llm-compressor has no counterpart): AWQ scales then GPTQ rounding
    # with per-group clipping (the settings of recipes/w4a16-awq-gptq.yaml, whose args are the
    # algorithm's defaults), and the same reproducing the float model's outputs (float_targets)
    "awq_gptq_w4a16_asym": ("AWQ+GPTQ W4A16 g64 asym", W4 + ASYM + ["recipe.base.algorithm=awq_gptq"]),
    "awq_gptq_ft_w4a16_asym": ("AWQ+GPTQ float targets W4A16 g64 asym",
                               W4 + ASYM + ["recipe.base.algorithm=awq_gptq", "recipe.base.args.float_targets=true"]),
    # ... and the same with the block-output refinement of the rounding (engine/quant/signround.py)
    "awq_gptq_sr_w4a16_asym": ("AWQ+GPTQ+signround W4A16 g64 asym",
                               W4 + ASYM + ["recipe.base.algorithm=awq_gptq", "recipe.base.args.refine_steps=100",
                                            "recipe.base.args.refine_lr=0.01", "recipe.base.args.refine_scale_lr=0.01"]),
    # qrecipe's GPTQ in natural column order with every group's scale from the weights before any
    # update (once thought to be llm-compressor's choices; its default is the next configuration)
    "gptq_static_w4a16_asym": ("GPTQ static groups, natural order W4A16 g64 asym",
                               W4 + ASYM + ["recipe.base.algorithm=gptq", "recipe.base.args.act_order=false",
                                            "recipe.base.args.static_groups=true"]),
    # llm-compressor's GPTQModifier defaults exactly: activation order with static groups
    # (its actorder "static": columns visited by decreasing Hessian diagonal, every group's scale
    # from the unupdated weights)
    "gptq_static_act_w4a16_asym": ("GPTQ static groups, activation order W4A16 g64 asym",
                                   W4 + ASYM + ["recipe.base.algorithm=gptq", "recipe.base.args.act_order=true",
                                                "recipe.base.args.static_groups=true"]),
    # GPTQ alone with clipping and float targets (the best of these on TinyStories-656K)
    "gptq_clip_ft_w4a16_asym": ("GPTQ clip float targets W4A16 g64 asym",
                                W4 + ASYM + ["recipe.base.algorithm=gptq", "recipe.base.args.clip=true",
                                             "recipe.base.args.float_targets=true"]),
    # ... refining against the float model's own block outputs (refine_target=model)
    # (with AutoRound's step size, 1 / steps, for both the offsets and the scales: the first refinement measured)
    "awq_gptq_srm_w4a16_asym": ("AWQ+GPTQ+signround to the float model W4A16 g64 asym",
                                W4 + ASYM + ["recipe.base.algorithm=awq_gptq", "recipe.base.args.refine_steps=100",
                                             "recipe.base.args.refine_target=model", "recipe.base.args.refine_lr=0.01",
                                             "recipe.base.args.refine_scale_lr=0.01"]),
    # ... with the step sizes chosen on two of SmolLM2's blocks (bench/ALGORITHMS.md): 0.04 for the
    # offsets, 0.004 for the scales (worse on the whole model: the defaults stayed 0.01 / 0.01)
    "awq_gptq_srm2_w4a16_asym": ("AWQ+GPTQ+signround to the float model, steps 0.04/0.004, W4A16 g64 asym",
                                 W4 + ASYM + ["recipe.base.algorithm=awq_gptq", "recipe.base.args.refine_steps=100",
                                              "recipe.base.args.refine_target=model", "recipe.base.args.refine_lr=0.04",
                                              "recipe.base.args.refine_scale_lr=0.004"]),
    # ... refining the rounding offsets only (group scales as GPTQ chose them): the step that held
    # out calibration windows favoured (bench/ALGORITHMS.md)
    "awq_gptq_srm_v_w4a16_asym": ("AWQ+GPTQ+signround to the float model, offsets only, W4A16 g64 asym",
                                  W4 + ASYM + ["recipe.base.algorithm=awq_gptq", "recipe.base.args.refine_steps=100",
                                               "recipe.base.args.refine_target=model",
                                               "recipe.base.args.refine_lr=0.01",
                                               "recipe.base.args.refine_scale_lr=0"]),
    # ... with 8 windows per step (AutoRound's batch size) instead of 4
    "awq_gptq_srm_w8_w4a16_asym": ("AWQ+GPTQ+signround to the float model, 8 windows per step, W4A16 g64 asym",
                                   W4 + ASYM + ["recipe.base.algorithm=awq_gptq", "recipe.base.args.refine_steps=100",
                                                "recipe.base.args.refine_target=model",
                                                "recipe.base.args.refine_windows=8",
                                                "recipe.base.args.refine_lr=0.01",
                                                "recipe.base.args.refine_scale_lr=0.01"]),
    # the shipped recipe itself, as a user runs it (recipes/w4a16-awq-gptq-refined.yaml)
    "recipe_refined": ("W4A16 g64 asym, recipes/w4a16-awq-gptq-refined.yaml as shipped",
                       ["recipe=w4a16-awq-gptq-refined"]),
    # ... refining only the rounding offsets per block and leaving every group scale to the
    # end-to-end tuning (local rounding, global scales: EfficientQAT's split)
    "recipe_refined_v": ("W4A16 g64 asym, the shipped refined recipe with offsets-only block refinement",
                         ["recipe=w4a16-awq-gptq-refined", "recipe.base.args.refine_scale_lr=0"]),
    "awq_gptq_ft_srm_w4a16_asym": ("AWQ+GPTQ float targets+signround to the float model W4A16 g64 asym",
                                   W4 + ASYM + ["recipe.base.algorithm=awq_gptq", "recipe.base.args.float_targets=true",
                                                "recipe.base.args.refine_steps=100",
                                                "recipe.base.args.refine_target=model",
                                                "recipe.base.args.refine_lr=0.01",
                                                "recipe.base.args.refine_scale_lr=0.01"]),
    "w8a8_dynamic": ("W8A8 dynamic", W8A8),
    "sq_w8a8_dynamic": ("SmoothQuant W8A8 dynamic", W8A8 + SQ),
    "w8a8_static": ("W8A8 static", W8A8 + STATIC),
    "sq_w8a8_static": ("SmoothQuant W8A8 static", W8A8 + STATIC + SQ),
    # qrecipe's alpha search (recipes/smoothquant.yaml); llm-compressor has no counterpart
    "sq_grid_w8a8_static": ("SmoothQuant alpha grid W8A8 static",
                            W8A8 + STATIC + ["recipe.base.algorithm=smoothquant",
                                             "recipe.base.args.alpha=[0.3,0.5,0.7,0.9]"]),
}
QRECIPE_ONLY = {"sq_grid_w8a8_static", "awq_gptq_w4a16_asym", "awq_gptq_ft_w4a16_asym", "awq_gptq_sr_w4a16_asym",
                "gptq_clip_ft_w4a16_asym", "gptq_static_w4a16_asym", "gptq_static_act_w4a16_asym",
                "awq_gptq_srm_w4a16_asym", "awq_gptq_ft_srm_w4a16_asym", "awq_gptq_srm2_w4a16_asym",
                "awq_gptq_srm_v_w4a16_asym", "awq_gptq_srm_w8_w4a16_asym",
                "recipe_refined", "recipe_refined_v"}
# The gap closed is measured against symmetric RTN (README "Calibration algorithms"), each tool's own
GAP_REFERENCE = "rtn_w4a16"


def _settings(args, extra: list[str]):
    sys.path.insert(0, str(HERE))
    from qrecipe.engine.config import compose, load_settings

    return load_settings(compose([f"calib.samples={args.samples}", f"calib.seq_len={args.seq_len}",
                                  f"calib.seed={args.calib_seed}",
                                  "eval.seq_len=512", f"eval.windows={args.eval_windows}", "target=cpu",
                                  f"calib.precision={args.precision}", "model.dtype=float32", *extra,
                                  *args.override]))


# Further texts no configuration was tuned on, scored beside WikiText-2 test (same window count):
# each row's "ppl_by_text"
HELD_OUT_TEXTS = {"wikitext2_valid": ("eval.data.split=valid",), "tinystories_val": ("data@eval.data=tinystories",)}


def by_text(model, data: dict) -> dict[str, float]:
    from _measure import perplexity

    return {name: perplexity(model, w) for name, w in data.get("extra", {}).items()}


def prepare(args) -> tuple[Path, Path]:
    """(model folder, windows file): the converted model and both tools' token windows."""
    import torch

    from qrecipe.engine.data import calibration_windows, load_documents, token_windows
    from qrecipe.engine.models.loading import resolve_source

    s = _settings(args, W4)
    model_dir = Path(resolve_source(s.model, Path(s.paths.cache), convert=True).source)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    CACHE.mkdir(exist_ok=True)
    seed = f"-seed{args.calib_seed}" if args.calib_seed else ""
    out = CACHE / f"windows-{args.samples}x{args.seq_len}-{args.eval_windows}{seed}.pt"
    extra = {name: token_windows(tok, load_documents(_settings(args, W4 + list(o)).eval.data), 512, args.eval_windows)
             for name, o in HELD_OUT_TEXTS.items()}
    torch.save({"calib": calibration_windows(tok, s.calib),
                "eval": token_windows(tok, load_documents(s.eval.data), 512, args.eval_windows),
                "extra": extra}, out)
    return model_dir, out


def run_qrecipe(args, config: str, windows_pt: str) -> dict:
    """One configuration in this process (called as a subprocess by main)."""
    import torch

    from _measure import PeakRSS, Timer, perplexity
    from qrecipe.engine.models.loading import load_model
    from qrecipe.engine.planning import build_plan
    from qrecipe.engine.quantize import quantize_model

    torch.set_num_threads(2)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("qrecipe").setLevel(logging.INFO)  # e.g. each block's refinement
    s = _settings(args, CONFIGS[config][1])
    plan, _ = build_plan(s, torch.device("cpu"))
    model, tokenizer = load_model(s.model, Path(s.paths.cache), torch.device("cpu"), torch.float32)
    data = torch.load(windows_pt)
    with PeakRSS() as mem, Timer() as t:
        report = quantize_model(model, plan, data["calib"], progress=False, precision=s.calib.precision)
    return {"tool": "qrecipe", "config": config, "ppl": perplexity(model, data["eval"]), "seconds": t.seconds,
            "peak_rss": mem.peak, "rss_before": mem.start, "notes": report.notes, "ppl_by_text": by_text(model, data)}


def baseline(windows_pt: str, model_dir: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from _measure import perplexity

    torch.set_num_threads(2)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    data = torch.load(windows_pt)
    return {"tool": "float", "config": "baseline", "ppl": perplexity(model, data["eval"]),
            "ppl_by_text": by_text(model, data)}


def _child(cmd: list[str]) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)  # its log goes to our stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        return {"error": [f"exit {done.returncode}; its log is above"] + done.stdout.strip().splitlines()[-1:]}
    return json.loads(lines[-1])


def _previous(args) -> dict:
    old = json.loads(args.out.read_text())
    if (old["samples"], old["seq_len"], old["eval_windows"], old.get("calib_seed", 0),
            old.get("precision", "float32")) != (args.samples, args.seq_len, args.eval_windows, args.calib_seed,
                                                 args.precision):
        raise SystemExit(f"--update: {args.out} was measured with other sizes; rerun without it")
    return old


def gap_closed(ppl: float, rtn_ppl: float | None, base_ppl: float) -> str:
    """(ppl of symmetric RTN - ppl) / (ppl of symmetric RTN - float ppl), as a percentage."""
    if rtn_ppl is None:
        return "-"
    return f"{100 * (rtn_ppl - ppl) / (rtn_ppl - base_ppl):.1f}%"


def table(results: list[dict], base_ppl: float) -> str:
    """W4A16 rows carry the gap they close against each tool's symmetric RTN of the same run."""
    rtn = {r["tool"]: r["ppl"] for r in results if r["config"] == GAP_REFERENCE and "ppl" in r}
    rows = ["| configuration | tool | ppl | vs float | gap closed vs llm-compressor's / qrecipe's sym RTN "
            "| quantize s | peak RSS MiB (model loaded) |",
            "|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        label = CONFIGS[r["config"]][0]
        if "error" in r:
            rows.append(f"| {label} | {r['tool']} | failed: {' '.join(r['error'])[:80]} | | | | |")
            continue
        gap = "-"
        if "W4A16" in label:
            gap = (f"{gap_closed(r['ppl'], rtn.get('llm-compressor'), base_ppl)} / "
                   f"{gap_closed(r['ppl'], rtn.get('qrecipe'), base_ppl)}")
        rows.append(f"| {label} | {r['tool']} | {r['ppl']:.3f} | {100 * (r['ppl'] / base_ppl - 1):+.2f}% | {gap} | "
                    f"{r['seconds']:.1f} | {r['peak_rss'] / 2**20:.0f} ({r['rss_before'] / 2**20:.0f}) |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--eval-windows", type=int, default=40)
    p.add_argument("--calib-seed", type=int, default=0,
                   help="calib.seed: which calibration windows both tools get (the spread of a figure over seeds)")
    p.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                   help="qrecipe's calib.precision; llm-compressor gets the model loaded in that dtype (its way of "
                        "calibrating in bf16), cast back to float32 to be scored")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="a further qrecipe override for every configuration (recorded with each row)")
    p.add_argument("--only", default=",".join(CONFIGS), help=f"comma-separated, from: {', '.join(CONFIGS)}")
    p.add_argument("--out", type=Path, default=HERE / "algorithms.json",
                   help="where the results go (default: the recorded bench/algorithms.json)")
    p.add_argument("--no-llmc", action="store_true")
    p.add_argument("--no-qrecipe", action="store_true", help="only llm-compressor's rows (qrecipe's: later, --update)")
    p.add_argument("--update", action="store_true",
                   help="rerun only qrecipe's rows of --only; keep every other row of --out")
    p.add_argument("--merge", action="store_true",
                   help="rerun the rows of --only (both tools unless --no-llmc/--no-qrecipe); keep every other row")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one qrecipe config
    p.add_argument("--windows", help=argparse.SUPPRESS)
    args = p.parse_args()
    unknown = [c for c in args.only.split(",") if c not in CONFIGS] if not args.one else []
    if unknown:
        p.error(f"--only: unknown configuration {unknown[0]!r}; choose from {', '.join(CONFIGS)}")
    sys.path.insert(0, str(HERE))
    if args.one:
        print(json.dumps(run_qrecipe(args, args.one, args.windows)))
        return
    model_dir, windows_pt = prepare(args)
    sizes = ["--samples", str(args.samples), "--seq-len", str(args.seq_len), "--eval-windows", str(args.eval_windows),
             "--calib-seed", str(args.calib_seed), "--precision", args.precision,
             *[f"--override={o}" for o in args.override]]
    old = _previous(args) if args.update or args.merge else None
    base = {"ppl": old["baseline_ppl"], "ppl_by_text": old["baseline_ppl_by_text"]} \
        if old and "baseline_ppl_by_text" in old else baseline(str(windows_pt), model_dir)
    print(f"float baseline ppl {base['ppl']:.3f}", flush=True)
    results: list[dict] = []

    def save() -> list[dict]:
        """Written after every row, so an interrupted run keeps what it measured. The new rows take
        the place of the old ones of the same tool and configuration; all others stay."""
        rows = results
        if old:
            fresh = {(r["tool"], r["config"]): r for r in results}
            rows = [fresh.pop((r["tool"], r["config"]), r) for r in old["results"]] + list(fresh.values())
        args.out.write_text(json.dumps({"samples": args.samples, "seq_len": args.seq_len,
                                        "eval_windows": args.eval_windows, "calib_seed": args.calib_seed,
                                        "precision": args.precision,
                                        "baseline_ppl": base["ppl"], "baseline_ppl_by_text": base["ppl_by_text"],
                                        "results": rows}, indent=2) + "\n")
        return rows

    for config in args.only.split(","):
        sides = [] if args.no_qrecipe else [[sys.executable, __file__, *sizes, "--one", config, "--windows",
                                              str(windows_pt)]]
        if not args.no_llmc and not args.update and config not in QRECIPE_ONLY and LLMC_PYTHON.exists():
            sides.append([str(LLMC_PYTHON), str(HERE / "llmc_run.py"), config, str(model_dir), str(windows_pt),
                          args.precision])
        for cmd in sides:
            r = _child(cmd)
            r.setdefault("tool", "llm-compressor" if cmd[0] == str(LLMC_PYTHON) else "qrecipe")
            r.update(config=config, date=time.strftime("%Y-%m-%d %H:%M"))
            if args.override and r["tool"] == "qrecipe":
                r["overrides"] = args.override
            results.append(r)
            print(json.dumps(r), flush=True)
            save()
    results = save()
    print(table(results, base["ppl"]))


if __name__ == "__main__":
    main()
