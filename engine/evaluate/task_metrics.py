"""Behaviour by task family, against the baseline.

For each prompt the baseline generates its greedy continuation once (cached). A variant is
then scored by teacher forcing, in one forward pass per prompt instead of one per token:
along the prompt followed by the baseline's continuation, at every position, does the
variant pick the same next token as the baseline did? Up to the first position where they
differ both models saw the same prefix, so "all the same" is exactly "the variant's greedy
continuation equals the baseline's, token for token" (both sides are read from a
teacher-forced pass, so float-rounding ties cannot make a model disagree with itself).

    greedy_match   share of prompts whose continuation equals the baseline's
    prefix_match   mean share of the continuation before the first differing token
    loglik         mean per-token log-likelihood of the reference answer (nats)
    loglik_delta   variant minus baseline, averaged over prompts (negative: worse)
    valid_rate     json family: share of outputs whose first JSON object parses and validates
                   (a variant that diverges is generated on from where it diverged)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import metric_names as M
from ..config.settings import TaskSpec
from .forward import sequence_logits
from .generation import greedy_continuations, stop_token_ids
from .json_tasks import is_valid_json_answer
from .tasks import TaskItem


@dataclass
class TaskBaseline:
    """The baseline's side of every prompt, cached with the baseline."""

    continuations: list[list[int]]  # greedy tokens, ending at a stop token or after new_tokens
    choices: list[list[int]]  # the baseline's argmax at each continuation position (teacher forced)
    ref_loglik: list[float]
    outputs_valid: list[bool | None]  # json family: its output parses and validates

    def to_state(self) -> dict:
        return {"continuations": self.continuations, "choices": self.choices, "ref_loglik": self.ref_loglik,
                "outputs_valid": self.outputs_valid}

    @classmethod
    def from_state(cls, state: dict) -> "TaskBaseline":
        return cls(state["continuations"], state["choices"], state["ref_loglik"], state["outputs_valid"])


@torch.no_grad()
def teacher_forced(model, items: list[TaskItem], continuations: list[list[int]], batch_size: int,
                   desc: str, progress: bool) -> tuple[list[list[int]], list[float]]:
    """(argmax at each continuation position, mean log-likelihood of each reference answer)."""
    sequences = [it.prompt_ids + cont[:-1] for it, cont in zip(items, continuations)]
    sequences += [it.prompt_ids + it.reference_ids for it in items]
    n = len(items)
    choices: list[list[int]] = [[] for _ in items]
    loglik: list[float] = [0.0] * n
    for i, logits in sequence_logits(model, sequences, batch_size, desc, progress):
        if i < n:
            start = len(items[i].prompt_ids) - 1
            choices[i] = logits[start:start + len(continuations[i])].argmax(-1).tolist()
        else:
            it = items[i - n]
            start = len(it.prompt_ids) - 1
            logp = torch.log_softmax(logits[start:start + len(it.reference_ids)].float(), dim=-1)
            target = torch.tensor(it.reference_ids, device=logp.device).unsqueeze(-1)
            loglik[i - n] = logp.gather(-1, target).mean().item()
    return choices, loglik


def _decode(tokenizer, tokens: list[int]) -> str:
    return tokenizer.decode(tokens, skip_special_tokens=True)


def baseline_tasks(model, tokenizer, items: list[TaskItem], spec: TaskSpec, progress: bool = True) -> TaskBaseline:
    stops = stop_token_ids(model, tokenizer)
    continuations = greedy_continuations(model, [it.prompt_ids for it in items], spec.new_tokens, stops,
                                         spec.batch_size, "baseline tasks: generate", progress)
    choices, loglik = teacher_forced(model, items, continuations, spec.batch_size, "baseline tasks: score", progress)
    valid = [is_valid_json_answer(_decode(tokenizer, cont), it.schema) if it.schema else None
             for it, cont in zip(items, continuations)]
    return TaskBaseline(continuations, choices, loglik, valid)


def first_difference(a: list[int], b: list[int]) -> int:
    """Index of the first position where a and b differ (len(b) when a starts with b)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return len(b) if len(a) >= len(b) else len(a)


def _variant_outputs(model, items, base, choices, stops, spec, progress) -> dict[int, list[int]]:
    """The variant's own greedy output for json prompts: its choices where they agree with the
    baseline's; where they differ, generated on from the first differing token."""
    outputs, pending = {}, []
    for i, it in enumerate(items):
        if not it.schema:
            continue
        d = first_difference(choices[i], base.choices[i])
        if d == len(base.choices[i]):
            outputs[i] = choices[i]
            continue
        prefix = base.choices[i][:d] + [choices[i][d]]
        outputs[i] = prefix
        if choices[i][d] not in stops and len(prefix) < spec.new_tokens:
            pending.append(i)
    if pending:
        budget = spec.new_tokens - min(len(outputs[i]) for i in pending)
        more = greedy_continuations(model, [items[i].prompt_ids + outputs[i] for i in pending], budget, stops,
                                    spec.batch_size, "variant tasks: json", progress)
        for i, tokens in zip(pending, more):
            outputs[i] = outputs[i] + tokens[:spec.new_tokens - len(outputs[i])]
    return outputs


def variant_tasks(model, tokenizer, items: list[TaskItem], base: TaskBaseline, spec: TaskSpec,
                  progress: bool = True) -> dict[str, float | str]:
    """Per-family metrics (flat names: task.<family>.<metric>) plus the worst family."""
    choices, loglik = teacher_forced(model, items, base.continuations, spec.batch_size, "variant tasks: score",
                                     progress)
    outputs = _variant_outputs(model, items, base, choices, stop_token_ids(model, tokenizer), spec, progress)
    metrics: dict[str, float | str] = {}
    for family in dict.fromkeys(it.family for it in items):
        idx = [i for i, it in enumerate(items) if it.family == family]
        prefix = [first_difference(choices[i], base.choices[i]) / max(1, len(base.choices[i])) for i in idx]

        def key(kind: str, family=family) -> str:
            return M.task_metric(family, kind)

        metrics[key(M.PROMPTS)] = len(idx)
        metrics[key(M.GREEDY_MATCH)] = sum(p == 1.0 for p in prefix) / len(idx)
        metrics[key(M.PREFIX_MATCH)] = sum(prefix) / len(idx)
        metrics[key(M.LOGLIK)] = sum(loglik[i] for i in idx) / len(idx)
        metrics[key(M.LOGLIK_BASELINE)] = sum(base.ref_loglik[i] for i in idx) / len(idx)
        metrics[key(M.LOGLIK_DELTA)] = metrics[key(M.LOGLIK)] - metrics[key(M.LOGLIK_BASELINE)]
        if any(items[i].schema for i in idx):
            metrics[key(M.VALID_RATE)] = sum(is_valid_json_answer(_decode(tokenizer, outputs[i]), items[i].schema)
                                             for i in idx) / len(idx)
            metrics[key(M.VALID_RATE_BASELINE)] = sum(bool(base.outputs_valid[i]) for i in idx) / len(idx)
    families = list(dict.fromkeys(it.family for it in items))
    if families:
        worst = min(families, key=lambda f: (metrics[M.task_metric(f, M.GREEDY_MATCH)],
                                             metrics[M.task_metric(f, M.LOGLIK_DELTA)]))
        metrics[M.TASK_WORST_FAMILY] = worst
        metrics[M.TASK_WORST_GREEDY_MATCH] = metrics[M.task_metric(worst, M.GREEDY_MATCH)]
    return metrics
