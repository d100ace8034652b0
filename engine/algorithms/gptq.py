"""GPTQ: second-order error compensation from the calibration inputs' Hessian.

Layers that read one input (q/k/v, gate/up) share one Hessian; GPTQ treats weight rows
independently given the Hessian, so such layers with the same grid and arguments are
solved as one stacked matrix (one factorization, one column loop).

`true_sequential` (the default) quantizes q/k/v as soon as every calibration batch has shown them
the block's input, then o_proj on the output of the quantized attention, and so on, all in the
block's one forward pass (engine/calibration/sequential.py): later layers calibrate on the
quantized earlier ones, and the block needs no second, quantized pass. float_targets and
refine_steps need the float block's outputs, and activation-quantized layers a true quantized
forward: those blocks run both passes.

Fallbacks, recorded in the run's notes: a layer that saw no calibration tokens (an expert:
fewer than calib.min_expert_tokens) is quantized with RTN; a Hessian that stays singular after dampening is retried with ten
and a hundred times the dampening, then the layer is quantized with RTN.

`refine_steps` > 0 then revisits the rounding of all of the block's GPTQ layers at once against
the block's float output (engine/quant/signround.py): sign-gradient steps over each weight's
rounding offset and each group's scale, kept only where they lower the block's output error on
the calibration windows. Layers outside the blocks, FP8 layers and RTN fallbacks are not refined
(noted). `tune_epochs` > 0 then, once the whole model is quantized, tunes the group scales of
every such layer at once against the float model's next-token distribution (engine/quant/tune.py,
run by engine/quantize.py).
"""

from __future__ import annotations

import torch

from ..quant.clip import clip_ratios
from ..quant.gptq import SingularHessian, gptq_quantize
from ..quant.rtn import rtn_quantize
from ..quant.signround import Rounding, refine_rounding
from .base import FLOAT_TARGETS, Algorithm, Arg, is_bool, non_negative_int, number_in, positive_int

RETRY_DAMP_FACTORS = (1, 10, 100)
# A block whose refinement did not lower its output error is refined again with smaller steps
# (with steps of 0.04, SmolLM2-135M's first block did not gain and the others did: bench/ALGORITHMS.md).
RETRY_STEP_FACTORS = (1, 0.25)


class GPTQ(Algorithm):
    name = "gptq"
    needs_calibration = True
    stats = frozenset({"hessian"})
    ARGS = {
        "damp": Arg(0.01, number_in(0.0, 1.0), "a fraction in [0, 1] of the mean Hessian diagonal (e.g. 0.01)"),
        "block_size": Arg(128, positive_int, "a positive number of columns per lazy update (e.g. 128)"),
        "act_order": Arg(True, is_bool, "true (visit columns by decreasing activation energy) or false"),
        "clip": Arg(False, is_bool, "true or false (search each group's clipping when its scale is fixed)"),
        "clip_grid": Arg(20, positive_int, "a positive number of clipping steps (e.g. 20)"),
        "max_shrink": Arg(0.5, number_in(0.0, 0.95), "a fraction in [0, 0.95] (how far clipping may shrink a range)"),
        "static_groups": Arg(False, is_bool, "true (each group's scale from the weights before GPTQ updates them) "
                                             "or false (from its updated weights when its first column is visited)"),
        "float_targets": FLOAT_TARGETS,
        "true_sequential": Arg(True, is_bool, "true (quantize each input group once every calibration batch has "
                                              "reached it, in the block's one forward pass, so later layers "
                                              "calibrate on the quantized earlier ones) or false (every layer of the "
                                              "block from its float forward, then a second pass)"),
        "refine_steps": Arg(0, non_negative_int, "a number of sign-gradient steps refining the block's rounding "
                                                 "(0: off; e.g. 100)"),
        "refine_windows": Arg(4, positive_int, "a positive number of calibration windows per refinement step "
                                               "(e.g. 4)"),
        "refine_lr": Arg(0.01, number_in(0.0, 0.5), "a step size in [0, 0.5] for the rounding offsets (e.g. 0.01, "
                                                    "AutoRound's 1 / steps at 100 steps; it decays linearly to 0)"),
        "refine_scale_lr": Arg(0.01, number_in(0.0, 0.5), "a step size in [0, 0.5] for the group scale factors "
                                                          "(e.g. 0.01; 0 keeps GPTQ's scales)"),
        "refine_target": Arg("block", lambda v: v in ("block", "model"),
                             "block (the float block's output on the quantized model's inputs) or model (the float "
                             "model's own output of the block, which needs a second, float stream of inputs)"),
        "tune_epochs": Arg(0, non_negative_int, "a number of passes over the calibration windows tuning the group "
                                                "scales end to end against the float model's next-token "
                                                "distribution, once every layer is quantized (0: off; e.g. 2)"),
        "tune_lr": Arg(1e-3, number_in(0.0, 0.1), "an Adam step size in [0, 0.1] for the log of each group scale "
                                                  "(e.g. 0.001; it decays linearly to 0)"),
    }

    @classmethod
    def scale_tuning(cls, args):
        epochs = args.get("tune_epochs", cls.ARGS["tune_epochs"].default)
        return (epochs, float(args.get("tune_lr", cls.ARGS["tune_lr"].default))) if epochs > 0 else None

    @classmethod
    def wants_float_stream(cls, args):
        refine = args.get("refine_steps", cls.ARGS["refine_steps"].default) > 0
        target = args.get("refine_target", cls.ARGS["refine_target"].default)
        return super().wants_float_stream(args) or (refine and target == "model")

    def _batches(self):
        """Tasks grouped by (shared input, grid, arguments): each group is solved at once."""
        batches: dict[tuple, list] = {}
        for t in self.tasks:
            stats = self.context.stats.get(t.name)
            key = (id(stats), t.grid, t.module.in_features, tuple(sorted(t.args.items())),
                   id(self.context.input_divisors.get(t.name)))
            batches.setdefault(key, []).append(t)
        return list(batches.values())

    def in_pass_blocker(self) -> str | None:
        for t in self.tasks:
            if not self.arg(t, "true_sequential"):
                return "true_sequential=false"
            if self.arg(t, "float_targets"):
                return "float_targets needs the float block's outputs"
            if self.arg(t, "refine_steps") > 0:
                return "refine_steps needs the float block's outputs"
            if not t.scheme.weight_format.weight_only:
                return "its activations are quantized too"
        return None

    def quantize_group(self, names):
        return self.quantize(set(names))

    def quantize(self, only: set[str] | None = None):
        out, roundings = {}, []
        for tasks in self._batches():
            if only is not None and tasks[0].name not in only:
                continue
            first = tasks[0]
            names = "+".join(t.name for t in tasks)
            stats = self.context.stats.get(first.name)
            short = first.too_few_tokens(stats)
            if short:
                self.notes.append(f"gptq: {names} {short}; quantized with rtn")
                out.update({t.name: rtn_quantize(t.module.weight.float(), t.scheme, t.params) for t in tasks})
                continue
            w = torch.cat([t.module.weight.float() for t in tasks])
            h = self.context.hessian(first.name)
            damp = self.arg(first, "damp")
            clip = clip_ratios(self.arg(first, "clip_grid"), self.arg(first, "max_shrink")) \
                if self.arg(first, "clip") else None
            refine = self.arg(first, "refine_steps") > 0 and not first.grid.is_fp8
            unrounded = torch.empty_like(w) if refine else None
            solved = None
            for factor in RETRY_DAMP_FACTORS:
                try:
                    solved = gptq_quantize(w, h, first.grid, damp * factor if damp else 0.0,
                                           self.arg(first, "block_size"), self.arg(first, "act_order"), clip,
                                           unrounded, self.arg(first, "static_groups"))
                except SingularHessian:
                    if not damp:
                        break  # no dampening to raise: a zero damp asks for the exact Hessian
                    continue
                if factor != 1:
                    self.notes.append(f"gptq: {names} needed damp {damp * factor:g} (x{factor}) for a "
                                      f"positive definite Hessian")
                break
            if solved is None:
                self.notes.append(f"gptq: {names} has a singular Hessian (damp {damp:g}, "
                                  f"{stats.tokens} tokens); quantized with rtn")
                out.update({t.name: rtn_quantize(t.module.weight.float(), t.scheme, t.params) for t in tasks})
                continue
            w_q, scale, zero = solved
            row = 0
            for t in tasks:
                rows = slice(row, row + t.module.out_features)
                out[t.name] = first.grid.quantized(w_q[rows], scale[rows], zero[rows])
                if refine:
                    roundings.append((t, Rounding(f"{self.context.relative(t.name)}.weight", unrounded[rows],
                                                  scale[rows], zero[rows], t.grid)))
                row = rows.stop
        if only is None and any(self.arg(t, "refine_steps") > 0 for t in self.tasks):
            out.update(self._refine(roundings))
        return out

    def _refine(self, roundings: list) -> dict:
        """The block-output refinement of the GPTQ layers' rounding (engine/quant/signround.py)."""
        wanted = [t for t in self.tasks if self.arg(t, "refine_steps") > 0]
        if self.context.calls is None or not self.context.prefix:
            self.notes.append(f"gptq: refine_steps needs a decoder block's inputs; "
                              f"{', '.join(t.name for t in wanted)} not refined (GPTQ's rounding kept)")
            return {}
        left = [t.name for t in wanted if t.name not in {task.name for task, _ in roundings}]
        if left:
            self.notes.append(f"gptq: {', '.join(left)} not refined (an FP8 grid or an RTN fallback)")
        if not roundings:
            return {}
        first = roundings[0][0]
        calls = list(self.context.calls)
        targets = None
        if self.arg(first, "refine_target") == "model":
            targets = self.context.float_outputs
            if not targets or len(targets) != len(calls):
                self.notes.append("gptq: refine_target=model needs the float model's stream of block inputs, which "
                                  "this run does not keep (a streamed run); refined against the float block's "
                                  "output on the quantized model's inputs instead")
                targets = None
        for factor in RETRY_STEP_FACTORS:
            result = refine_rounding(self.context.block, calls, [r for _, r in roundings],
                                     self.arg(first, "refine_steps"), windows_per_step=self.arg(first, "refine_windows"),
                                     lr=self.arg(first, "refine_lr") * factor,
                                     scale_lr=self.arg(first, "refine_scale_lr") * factor, targets=targets,
                                     precision=self.context.precision)
            if result.kept:
                if factor != 1:
                    self.notes.append(f"gptq: refining {self.context.prefix} needed step sizes x{factor:g} to lower "
                                      f"its output error ({result.loss_before:.4g} -> {result.loss_after:.4g})")
                break
        else:
            self.notes.append(f"gptq: refining {self.context.prefix} did not lower its output error "
                              f"({result.loss_before:.4g} -> {result.loss_after:.4g}, also with step sizes "
                              f"x{RETRY_STEP_FACTORS[-1]:g}); GPTQ's rounding kept")
            return {}
        return {t.name: t.grid.quantized(result.values[r.param], result.scales[r.param], r.zero)
                for t, r in roundings}

