"""A streamed run (plan.execution mode "streamed"): the float model is never loaded whole.

    run = StreamedRun(settings, plan, device, dtype, say)   # skeleton, resume folder (locked)
    base, notes = run.measure_baseline(inputs)               # block by block, or from the cache
    report = run.quantize(staging / "model")                 # block by block, shard by shard
    model = run.load_variant(staging / "model")              # the variant fits: measured normally
    run.finish()                                             # the run succeeded: drop the resume folder

engine/run.py calls these at its one branch point; `quantize_to_checkpoint` does the
quantization alone (benchmarks, tests).
"""

from __future__ import annotations

import dataclasses
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable

import torch

from ..checkpoint import load_checkpoint
from ..config.settings import Settings
from ..errors import ConfigError
from ..evaluate.suite import BaselineSide, EvalInputs
from ..models.loading import load_config
from ..plan import Plan
from ..quantize import QuantReport, quantize_model
from .allocator import fix_mmap_threshold
from .baseline import measure_baseline_streamed
from .blocks import StreamedBlocks
from .resume import ResumeLock, open_state, resume_folder
from .skeleton import StreamedModel
from .source import WeightSource, weight_source
from .writer import ShardWriter

Say = Callable[[str], None]


def _stamp(path: str) -> dict[str, Any]:
    p = Path(path)
    return {"path": str(p.resolve()), "size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns} if p.is_file() \
        else {"path": str(p)}


def fingerprint(settings: Settings, plan: Plan, source: WeightSource, device: torch.device,
                dtype: torch.dtype) -> dict[str, Any]:
    """What a resume folder's finished blocks depend on (resume.py)."""
    calib = None
    if any(lp.calibrates for lp in plan.quantized()):
        c = settings.calib
        calib = {**dataclasses.asdict(c), "stamp": _stamp(c.data.path)}
    try:
        qrecipe = version("qrecipe")
    except PackageNotFoundError:
        qrecipe = "unknown"
    return {"model": {"folder": str(source.folder.resolve()), "files": source.stamps()}, "plan_hash": plan.plan_hash,
            "calibration": calib, "dtype": str(dtype).replace("torch.", ""), "device": device.type,
            "torch": torch.__version__.split("+")[0], "qrecipe": qrecipe}


class StreamedRun:
    def __init__(self, settings: Settings, plan: Plan, device: torch.device, dtype: torch.dtype, say: Say):
        from transformers import AutoTokenizer

        self.settings, self.plan, self.device, self.dtype, self.say = settings, plan, device, dtype, say
        self.notes: list[str] = []
        if not fix_mmap_threshold():  # freed blocks go back to the system (allocator.py)
            self.notes.append("streaming: the allocator's mmap threshold could not be fixed (not glibc): freed "
                              "blocks may stay in the heap, so host memory can grow past the plan's estimate")
            say(self.notes[-1])
        spec = settings.model
        source = weight_source(spec, Path(settings.paths.cache))
        config = load_config(spec, Path(settings.paths.cache))
        self.model = StreamedModel(config, source, device, dtype, spec.trust_remote_code)
        self.tokenizer = AutoTokenizer.from_pretrained(source.folder, revision=spec.revision,
                                                       trust_remote_code=spec.trust_remote_code)
        self.folder = resume_folder(Path(settings.run.resume_dir), spec.name, plan.plan_hash)
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        self.lock = ResumeLock(self.folder)
        self.lock.acquire(self.folder)
        try:
            self.state = open_state(self.folder, fingerprint(settings, plan, source, device, dtype))
            n = len(self.model.blocks)
            if self.state.message and not self.state.resumed:  # an earlier state that did not match
                say(self.state.message)
            if self.state.resumed:  # (say may raise: a job cancelled at this step)
                say(f"resumed from block {self.state.done} of {n}: blocks before it are done ({self.folder})")
        except BaseException:
            self.lock.release()
            raise

    def measure_baseline(self, inputs: EvalInputs) -> BaselineSide:
        """The float baseline, block by block or from the cache; its notes say what it leaves out."""
        return measure_baseline_streamed(self.model, self.settings, inputs, self.device, self.dtype,
                                         self.folder / "baseline", self.plan.execution.get("reason", ""), self.say)

    def quantize(self, out: Path, progress: bool = True) -> QuantReport:
        """Quantize block by block into the resume folder's shards; the checkpoint in `out`."""
        m, n = self.model, len(self.model.blocks)
        resumed_at = self.state.done if self.state.resumed else None
        writer = ShardWriter(self.state.shards, n + 1)
        blocks = StreamedBlocks(m, self.plan, self.state, writer, int(self.settings.run.activation_budget_gib * 2**30),
                                self.say)
        report = quantize_model(m.model, self.plan, calibration=self.settings.calib, tokenizer=self.tokenizer,
                                progress=progress, blocks=blocks)
        total = writer.finish(out, m.model, self.tokenizer, self.plan, self.dtype)
        if resumed_at is not None:
            self.notes.append(f"streamed run resumed at block {resumed_at} of {n} (a previous run of the same "
                              f"model, plan and calibration was interrupted)")
        if blocks.store.spilled:
            self.notes.append(f"calibration activations exceeded run.activation_budget_gib="
                              f"{self.settings.run.activation_budget_gib:g}: {blocks.store.spilled} batches were "
                              f"read back from disk")
        report.notes = self.notes + report.notes
        report.block_seconds = blocks.block_seconds
        self.say(f"checkpoint written: {n + 1} shards, {total / 2**20:.1f} MiB")
        self.lock.release()
        return report

    def load_variant(self, out: Path):
        model, _, _ = load_checkpoint(out, self.device)
        return model

    def finish(self) -> None:
        """The run succeeded and is recorded: its resume folder goes (unless another run holds it
        by now)."""
        try:
            self.lock.acquire(self.folder)
        except ConfigError:  # another run took it over: leave it
            return
        try:
            shutil.rmtree(self.folder, ignore_errors=True)
        finally:
            self.lock.release()

    def abandon(self) -> None:
        """The run failed: keep the folder for the next run, let go of it."""
        if self.lock.lock.is_locked:
            self.lock.release()


def quantize_to_checkpoint(settings: Settings, plan: Plan, out: Path, device: torch.device, dtype: torch.dtype,
                           say: Say, progress: bool = False) -> QuantReport:
    """Stream the float weights through the plan into a checkpoint at `out`, measuring nothing."""
    run = StreamedRun(settings, plan, device, dtype, say)
    try:
        report = run.quantize(out, progress)
    except BaseException:
        run.abandon()
        raise
    run.finish()
    return report
