"""Where a variant's checkpoint lives: in the model/ folder of its run folder
(variants.output_dir), marked by qrecipe_quant.json.

engine/run.py writes that folder and engine/checkpoint.py names the marker; the names are
repeated here so the registry (promotion, the MLflow mirror, the job service) reads them
without importing torch (tests/registry/test_promotion_db.py checks they agree).
"""

from __future__ import annotations

from pathlib import Path

CHECKPOINT_SUBDIR = "model"
CHECKPOINT_MARKER = "qrecipe_quant.json"


def checkpoint_dir(output_dir: str | Path | None) -> Path | None:
    """The variant's checkpoint folder, or None when its run wrote none (or it is gone)."""
    if not output_dir:
        return None
    folder = Path(output_dir) / CHECKPOINT_SUBDIR
    return folder if (folder / CHECKPOINT_MARKER).is_file() else None
