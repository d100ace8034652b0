"""lm-evaluation-harness tasks read from local files, so they run offline.

Six multiple-choice benchmarks ship in their official layouts under the shared data folder
(`eval.lm_eval.data`, ../shared/README.md). Each local task is lm-eval's own task definition
(its YAML in the installed lm-eval: prompt, choices, target, metrics), with the hub dataset
replaced by the local file mapped row by row into the layout of the hub dataset that YAML
reads (e.g. ARC's `question.stem` becomes `question`, PIQA's labels come from their
line-aligned file). The prompts are therefore exactly lm-eval's, and a run of the standard
hub task on the same items scores the same requests.

`eval.lm_eval.source=hub` hands the names to lm-eval's TaskManager instead (any task it
knows; it downloads the data, so it needs the hub).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..config.settings import LmEvalSpec
from ..errors import ConfigError
from .tasks import read_jsonl


def _choices(row: dict) -> dict[str, list[str]]:
    items = row["question"]["choices"]
    return {"text": [c["text"] for c in items], "label": [c["label"] for c in items]}


def _arc(path: Path) -> list[dict]:
    """AI2 layout -> allenai/ai2_arc: question.stem -> question, choices -> {text, label}."""
    return [{"id": r["id"], "question": r["question"]["stem"], "choices": _choices(r), "answerKey": r["answerKey"]}
            for r in read_jsonl(path)]


def _openbookqa(path: Path) -> list[dict]:
    """AI2 layout -> allenai/openbookqa (main): question.stem -> question_stem."""
    return [{"id": r["id"], "question_stem": r["question"]["stem"], "choices": _choices(r),
             "answerKey": r["answerKey"]} for r in read_jsonl(path)]


def _piqa(path: Path) -> list[dict]:
    """Official layout (labels in a line-aligned .lst beside the jsonl) -> baber/piqa."""
    rows = read_jsonl(path)
    labels = path.with_name(path.stem + "-labels.lst").read_text().split()
    if len(labels) != len(rows):
        raise ConfigError(f"eval.lm_eval.data: {path} has {len(rows)} rows but its labels file {len(labels)}")
    return [{"goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"], "label": int(y)} for r, y in zip(rows, labels)]


def _winogrande(path: Path) -> list[dict]:
    return [{k: r[k] for k in ("sentence", "option1", "option2", "answer")} for r in read_jsonl(path)]


def _boolq(path: Path) -> list[dict]:
    """Label "true"/"false" -> super_glue's 1/0 (its choices are ["no", "yes"])."""
    return [{"question": r["question"], "passage": r["passage"], "idx": r["idx"],
             "label": {"true": 1, "false": 0}[str(r["label"]).lower()]} for r in read_jsonl(path)]


@dataclass(frozen=True)
class LocalTask:
    yaml: str  # lm-eval's definition, relative to lm_eval/tasks/
    file: str  # relative to eval.lm_eval.data
    rows: Callable[[Path], list[dict]]  # the file's rows in the hub dataset's layout
    split: str  # the split lm-eval's definition evaluates (test_split, else validation_split)


LOCAL_TASKS: dict[str, LocalTask] = {
    "arc_easy": LocalTask("arc/arc_easy.yaml", "arc-easy/arc-easy-test.jsonl", _arc, "test"),
    "arc_challenge": LocalTask("arc/arc_challenge.yaml", "arc-challenge/arc-challenge-test.jsonl", _arc, "test"),
    "piqa": LocalTask("piqa/piqa.yaml", "piqa/piqa-validation.jsonl", _piqa, "validation"),
    "winogrande": LocalTask("winogrande/default.yaml", "winogrande/winogrande-validation.jsonl", _winogrande,
                            "validation"),
    "boolq": LocalTask("super_glue/boolq/default.yaml", "boolq/boolq-validation.jsonl", _boolq, "validation"),
    "openbookqa": LocalTask("openbookqa/openbookqa.yaml", "openbookqa/openbookqa-test.jsonl", _openbookqa, "test"),
}


def data_files(spec: LmEvalSpec) -> list[Path]:
    """The local files the configured tasks read (none for source=hub)."""
    if spec.source != "local":
        return []
    return [Path(spec.data) / LOCAL_TASKS[name].file for name in spec.tasks if name in LOCAL_TASKS]


def check_lm_eval(spec: LmEvalSpec) -> None:
    """Fail before any model loads: lm-eval installed, task names known, local files present."""
    if not spec.enabled:
        return
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise ConfigError("eval.lm_eval.tasks: lm-eval is not installed; pip install 'lm-eval==0.4.13' "
                          "or set eval.lm_eval.tasks=[]") from None
    if len(set(spec.tasks)) != len(spec.tasks):
        raise ConfigError(f"eval.lm_eval.tasks: {list(spec.tasks)} names a task twice; name each once")
    if spec.source == "local":
        unknown = [t for t in spec.tasks if t not in LOCAL_TASKS]
        if unknown:
            raise ConfigError(f"eval.lm_eval.tasks: no local task {unknown[0]!r}; local tasks are "
                              f"{', '.join(LOCAL_TASKS)} (set eval.lm_eval.source=hub for lm-eval's hub tasks)")
        for name, path in zip(spec.tasks, data_files(spec)):
            if not path.is_file():
                raise ConfigError(f"eval.lm_eval.data: {name} reads {path}, which does not exist; set "
                                  f"eval.lm_eval.data to the folder holding {LOCAL_TASKS[name].file.split('/')[0]}/ "
                                  f"(or QRECIPE_SHARED to the folder holding data/)")


def _local_config(name: str, spec: LmEvalSpec) -> dict[str, Any]:
    import datasets
    import lm_eval.tasks
    # lm-eval's own YAML reader (resolves `include` and `!function`); lm-eval is pinned and
    # tests/engine/evaluate/test_lm_eval.py fails if it moves.
    from lm_eval.tasks._yaml_loader import load_yaml

    task = LOCAL_TASKS[name]
    cfg = load_yaml(Path(lm_eval.tasks.__file__).parent / task.yaml)
    for key in ("dataset_path", "dataset_name", "dataset_kwargs", "training_split", "validation_split", "test_split",
                "fewshot_split", "tag"):
        cfg.pop(key, None)
    path = Path(spec.data) / task.file
    cfg.update({"task": name, f"{task.split}_split": task.split,
                "custom_dataset": lambda **_: {task.split: datasets.Dataset.from_list(task.rows(path))}})
    return cfg


def build_tasks(spec: LmEvalSpec) -> dict[str, Any]:
    """{task name: lm-eval Task} for the configured tasks (leaf tasks; groups are expanded)."""
    import logging

    from lm_eval.api.task import ConfigurableTask

    # lm-eval warns on every custom dataset that kwargs can come from --metadata: not ours
    logging.getLogger("lm_eval.api.task").setLevel(logging.ERROR)
    if spec.source == "local":
        return {name: ConfigurableTask(config=_local_config(name, spec)) for name in spec.tasks}
    from lm_eval.tasks import TaskManager, get_task_dict

    return _leaves(get_task_dict(list(spec.tasks), TaskManager()))


def _leaves(tasks: dict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tasks.items():
        if isinstance(value, dict):
            out.update(_leaves(value))
        else:
            out[value.config.task if hasattr(value, "config") else str(key)] = value
    return out
