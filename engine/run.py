"""One recipe run: plan, load, baseline, quantize, evaluate, write the variant folder.

The output folder is staged under a hidden name and renamed into place only when every
file is written, so a failed run leaves nothing half-written behind.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from .checkpoint import save_checkpoint
from .config import load_settings
from .config.settings import Settings
from .data import check_data, load_documents, token_windows
from .evaluate import perplexity
from .evaluate.memory import weight_bytes
from .models.loading import load_model, resolve_dtype
from .plan import Plan
from .plan.render import human_bytes, render_plan
from .planning import build_plan, local_device
from .quantize import prepare_model, quantize_model

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    output_dir: Path
    plan: Plan
    metrics: dict[str, Any]
    settings: Settings
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"output_dir": str(self.output_dir), "recipe": self.plan.recipe, "model": self.plan.model_id,
                "target": self.plan.target, "plan_hash": self.plan.plan_hash, "metrics": self.metrics, **self.extra}

    def human(self) -> str:
        m = self.metrics
        return "\n".join([
            f"variant {self.plan.recipe} of {self.plan.model_id} for {self.plan.target} ({self.plan.scheme_mix()})",
            f"  perplexity  {m['ppl']:.4f} vs baseline {m['ppl_baseline']:.4f} ({m['ppl_delta_pct']:+.2f}%) "
            f"on {m['eval_tokens']:,} tokens of {m['eval_data']}",
            f"  weights     {human_bytes(m['weight_bytes'])} vs {human_bytes(m['weight_bytes_baseline'])} "
            f"({m['weight_reduction']:.2f}x smaller)",
            f"  written to  {self.output_dir}",
        ])


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _output_dir(settings: Settings, plan: Plan) -> Path:
    if settings.run.output_dir:
        out = Path(settings.run.output_dir)
        if out.exists():
            from .errors import ConfigError

            raise ConfigError(f"run.output_dir: {out} already exists; choose a new folder or leave it null")
        return out
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(settings.paths.root) / "runs" / f"{stamp}-{plan.recipe}-{plan.plan_hash[:8]}"
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def run(cfg: DictConfig, progress: bool = True) -> RunResult:
    settings = load_settings(cfg)
    device = local_device(settings)
    check_data(settings.eval.data, "eval.data")
    plan, info = build_plan(settings, device)
    say(render_plan(plan))
    out = _output_dir(settings, plan)
    staging = out.parent / f".{out.name}.partial"
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        metrics = _execute(settings, plan, device, staging, progress)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return RunResult(output_dir=out.resolve(), plan=plan, metrics=metrics, settings=settings)


def _execute(settings: Settings, plan: Plan, device: torch.device, staging: Path, progress: bool) -> dict[str, Any]:
    torch.manual_seed(settings.run.seed)
    ev = settings.eval
    dtype = resolve_dtype(settings.model.dtype, device)
    say(f"loading {settings.model.name} ({dtype}, {device}) ...")
    model, tokenizer = load_model(settings.model, Path(settings.paths.cache), device, dtype)
    windows = token_windows(tokenizer, load_documents(ev.data, "eval.data"), ev.seq_len, ev.windows, "eval")
    say(f"evaluating on {ev.windows} windows x {ev.seq_len} tokens of {ev.data.name} "
        f"(eval.windows, eval.seq_len; batch {ev.batch_size})")
    bytes_baseline = weight_bytes(model)
    base = perplexity(model, windows, ev.batch_size, desc="baseline ppl", progress=progress)
    say(f"baseline perplexity {base.ppl:.4f}")
    report = quantize_model(model, plan, calibration=settings.calib, tokenizer=tokenizer, progress=progress)
    backends = prepare_model(model)
    say(f"quantized {report.layers} layers in {report.seconds:.1f}s")
    var = perplexity(model, windows, ev.batch_size, desc="variant ppl", progress=progress)
    bytes_after = weight_bytes(model)
    metrics = {
        "ppl": var.ppl, "ppl_baseline": base.ppl, "ppl_delta_pct": 100 * (var.ppl / base.ppl - 1),
        "nll": var.nll, "nll_baseline": base.nll, "eval_tokens": var.tokens, "eval_data": ev.data.name,
        "weight_bytes": bytes_after, "weight_bytes_baseline": bytes_baseline,
        "weight_reduction": bytes_baseline / bytes_after, "quantize_seconds": report.seconds,
        "layers_quantized": report.layers, "layers_emulated": sum(1 for lp in plan.layers if lp.emulated),
        "device": str(device), "dtype": str(dtype).replace("torch.", ""),
    }
    mismatched = {n: b for n, b in backends.items() if plan.layer(n).backend != b}
    if mismatched:  # the plan promised a backend; say so if the loaded model disagrees
        log.warning("backends differ from the plan for %d layers (e.g. %s)", len(mismatched), next(iter(mismatched)))
    _write(settings, plan, metrics, report.notes, staging)
    if settings.run.save_checkpoint:
        say("writing checkpoint ...")
        save_checkpoint(model, tokenizer, plan, staging / "model")
    return metrics


def _write(settings: Settings, plan: Plan, metrics: dict, notes: list[str], staging: Path) -> None:
    (staging / "config.yaml").write_text(settings.resolved_yaml())
    (staging / "recipe.yaml").write_text(OmegaConf.to_yaml(settings.raw.recipe, resolve=True))
    (staging / "plan.json").write_text(plan.to_json())
    (staging / "plan.txt").write_text(render_plan(plan, expand=True) + "\n")
    (staging / "metrics.json").write_text(json.dumps({"metrics": metrics, "notes": notes}, indent=2))
