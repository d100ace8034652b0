"""Task prompts by family, drawn from the shared data, tokenized for scoring.

    prose  continuations of the primary eval text (a paragraph's opening -> the rest of it)
    math   GSM8K test questions -> the reference solution (calculator annotations removed)
    code   HumanEval prompts -> canonical solutions, taken in turn with MBPP (sanitized) problems
           -> reference code; scored by likelihood and agreement, never executed
    json   instructions asking for one JSON object (json_tasks.py) -> a correct answer

Prompts are taken at evenly spaced positions of each source (so they are not all the first,
easiest items), skipping those longer than eval.tasks.max_prompt_tokens, in a fixed order:
the same settings always give the same prompts. Instruction-style families (math, json) use
the tokenizer's chat template when it has one (eval.tasks.chat_template=auto).
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..config.settings import TaskSpec
from ..data.text import check_text_file
from ..errors import ConfigError
from .json_tasks import json_cases

_CALC = re.compile(r"<<[^>]*>>")
_PARAGRAPH = re.compile(r"\n\s*\n")
_PROSE_MIN_CHARS = 240
_CHAT_FAMILIES = ("math", "json")
_SOURCES = {"math": ("gsm8k",), "code": ("humaneval", "mbpp")}


@dataclass(frozen=True)
class TaskText:
    family: str
    source: str  # e.g. gsm8k/42
    prompt: str
    reference: str
    schema: str | None = None  # json family: the schema name the answer must match
    chat: bool = False  # instruction to wrap in the chat template


@dataclass(frozen=True)
class TaskItem:
    family: str
    source: str
    prompt_ids: list[int]
    reference_ids: list[int]
    schema: str | None = None


def check_task_data(spec: TaskSpec) -> None:
    """Fail before any model loads if a family's data file is missing."""
    for family in spec.families:
        for key in _SOURCES.get(family, ()):
            path = getattr(spec, key)
            if not Path(path).exists():
                raise ConfigError(f"eval.tasks.{key}: file {path!r} does not exist; set eval.tasks.{key}=FILE, set "
                                  f"QRECIPE_SHARED to the folder holding data/, or drop {family} from "
                                  f"eval.tasks.families")
            check_text_file(Path(path), f"eval.tasks.{key}")


def _spread(items: list, n_hint: int) -> Iterator:
    """Items at evenly spaced positions first, then the rest in order (for when some are skipped)."""
    if not items:
        return
    step = max(1, len(items) // max(1, n_hint))
    picked = list(range(0, len(items), step))
    yield from (items[i] for i in picked)
    chosen = set(picked)
    yield from (item for i, item in enumerate(items) if i not in chosen)


def read_jsonl(path: str | Path) -> list[dict]:
    """The rows of a JSON-lines file (gzipped when its name ends in .gz), blank lines skipped."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _prose(documents: list[str]) -> list[TaskText]:
    out = []
    paragraphs = [p.strip() for doc in documents for p in _PARAGRAPH.split(doc)]
    for i, para in enumerate(p for p in paragraphs if len(p) >= _PROSE_MIN_CHARS):
        cut = para.rfind(" ", 0, len(para) * 2 // 5)
        if cut > 0:
            out.append(TaskText("prose", f"text/{i}", para[:cut], para[cut:]))
    return out


def _math(path: str) -> list[TaskText]:
    return [TaskText("math", f"gsm8k/{i}", row["question"], _CALC.sub("", row["answer"]), chat=True)
            for i, row in enumerate(read_jsonl(path))]


def _humaneval(path: str) -> list[TaskText]:
    return [TaskText("code", row["task_id"], row["prompt"], row["canonical_solution"]) for row in read_jsonl(path)]


def _mbpp(path: str) -> list[TaskText]:
    rows = json.loads(Path(path).read_text(encoding="utf-8"))
    return [TaskText("code", f"mbpp/{row['task_id']}", f'"""\n{row["prompt"]}\n{row["test_list"][0]}\n"""\n',
                     row["code"].replace("\r\n", "\n")) for row in rows]


def _json() -> list[TaskText]:
    return [TaskText("json", f"json/{i}", instruction, answer, schema=schema, chat=True)
            for i, (instruction, answer, schema) in enumerate(json_cases())]


def task_texts(spec: TaskSpec, eval_documents: list[str]) -> dict[str, list[list[TaskText]]]:
    """Every candidate prompt per enabled family, one list per source, in source order."""
    builders = {"prose": lambda: [_prose(eval_documents)], "math": lambda: [_math(spec.gsm8k)],
                "code": lambda: [_humaneval(spec.humaneval), _mbpp(spec.mbpp)], "json": lambda: [_json()]}
    return {family: builders[family]() for family in spec.families}


def _render(tokenizer, task: TaskText, use_chat: bool) -> tuple[list[int], list[int]]:
    if task.chat and use_chat:
        text = tokenizer.apply_chat_template([{"role": "user", "content": task.prompt}], tokenize=False,
                                             add_generation_prompt=True)
        prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        text = f"Question: {task.prompt}\nAnswer:" if task.chat else task.prompt
        prompt_ids = tokenizer(text)["input_ids"]
    reference = task.reference if task.chat and use_chat else (" " + task.reference.lstrip()
                                                              if task.chat else task.reference)
    return prompt_ids, tokenizer(reference, add_special_tokens=False)["input_ids"]


def build_task_items(spec: TaskSpec, tokenizer, eval_documents: list[str]) -> list[TaskItem]:
    """eval.tasks.prompts tokenized prompts per family (fewer where a source has fewer that fit).
    A family with several sources (code) takes them in turn, so a handful draws from each."""
    use_chat = spec.chat_template == "auto" and bool(getattr(tokenizer, "chat_template", None))

    def fitting(source: list[TaskText], share: int) -> Iterator[TaskItem]:
        for task in _spread(source, share):
            prompt_ids, reference_ids = _render(tokenizer, task, use_chat)
            if reference_ids and len(prompt_ids) <= spec.max_prompt_tokens:
                yield TaskItem(task.family, task.source, prompt_ids, reference_ids[:spec.reference_tokens],
                               task.schema)

    items: list[TaskItem] = []
    for family, sources in task_texts(spec, eval_documents).items():
        share = -(-spec.prompts // len(sources))
        streams, taken = [fitting(source, share) for source in sources], 0
        while streams and taken < spec.prompts:
            for stream in list(streams):
                item = next(stream, None)
                if item is None:
                    streams.remove(stream)
                elif taken < spec.prompts:
                    items.append(item)
                    taken += 1
    return items
