"""A job's stage and progress, read from the steps a recipe run announces (engine/run.py).

The fractions are rough shares of a run's time on a CPU; they only move forward. A step this
table does not know keeps the progress where it was (tests/registry/jobs/test_progress.py checks
that every step engine/run.py announces is known here).
"""

from __future__ import annotations

# (the start of a step's message, stage, progress once it is reached), in run order
RUN_STEPS: tuple[tuple[str, str, float], ...] = (
    ("registry:", "started", 0.05),
    ("MLflow run", "started", 0.05),
    ("tracking and registry are off", "started", 0.05),
    ("loading ", "loading model", 0.10),
    ("measuring (sizes", "baseline", 0.15),
    ("baseline perplexity", "quantizing", 0.45),
    ("quantized ", "scoring variant", 0.55),
    ("timing the variant", "timing", 0.75),
    ("writing checkpoint", "writing checkpoint", 0.85),
    ("peak memory", "peak memory", 0.88),
    ("per-layer error", "per-layer error", 0.92),
)


def run_stage(message: str) -> tuple[str, float] | None:
    """(stage, progress) for a step message of a recipe run, or None if unknown."""
    for prefix, stage, fraction in RUN_STEPS:
        if message.startswith(prefix):
            return stage, fraction
    return None
