"""Exporting a qrecipe checkpoint into a format serving engines load.

qrecipe's own checkpoint (engine/checkpoint.py) stays the lossless native format; an export
is a conversion from it into a new folder, staged under a hidden name and renamed into place
when complete, so a failed export leaves nothing behind. The folder also holds plan.json
(what each layer is, so nothing downstream re-matches patterns) and qrecipe_export.json
(where it came from: checkpoint, variant, plan hash, library versions).
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from ..files import normal_modes
from .compressed_tensors import FORMAT as COMPRESSED_TENSORS
from .compressed_tensors import ExportError, write_compressed_tensors

PROVENANCE_FILE = "qrecipe_export.json"
WRITERS: dict[str, Callable[[Path, Path], dict[str, Any]]] = {COMPRESSED_TENSORS: write_compressed_tensors}


def _check_source(src: Path) -> dict[str, Any]:
    from ..checkpoint import FORMAT_VERSION, QUANT_FILE

    if not (src / QUANT_FILE).is_file():
        raise ExportError(f"export: {src} is not a qrecipe checkpoint (no {QUANT_FILE}); pass a variant id or the "
                          f"model/ folder of a run")
    meta = json.loads((src / QUANT_FILE).read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ExportError(f"export: {src} has format_version {meta.get('format_version')}, this qrecipe reads "
                          f"{FORMAT_VERSION}; re-run the recipe with this version")
    return meta


def _staging(out: Path, parents: bool) -> Path:
    if out.exists():
        raise ExportError(f"OUT_DIR: {out} already exists; choose a new folder (an export never overwrites)")
    if not out.parent.is_dir():
        if not parents or out.parent.exists():
            raise ExportError(f"OUT_DIR: the folder {out.parent} does not exist; create it first, or pass --parents "
                              f"to create it")
        out.parent.mkdir(parents=True)
    staging = out.parent / f".{out.name}.partial"
    try:
        staging.mkdir()
    except FileExistsError:
        raise ExportError(f"OUT_DIR: {out} is being written by another export ({staging} exists; remove it if "
                          f"that export died)") from None
    return staging


def export_checkpoint(src: str | Path, out: str | Path, fmt: str, provenance: dict[str, Any] | None = None,
                      parents: bool = False, **options) -> dict[str, Any]:
    """Convert the qrecipe checkpoint in src to fmt in the new folder out; returns the provenance
    written to out/qrecipe_export.json (provenance: extra fields such as the variant id). The
    folder holding out must exist unless `parents` asks to create it (a typo in a path then
    does not quietly make a new tree)."""
    if fmt not in WRITERS:
        raise ExportError(f"--format: unknown format {fmt!r}; choose one of {', '.join(WRITERS)}")
    src, out = Path(src).resolve(), Path(out).resolve()
    meta = _check_source(src)
    staging = _staging(out, parents)
    try:
        summary = WRITERS[fmt](src, staging, **options)
        record = {"format": fmt, "source_checkpoint": str(src), "model_id": meta.get("model_id"),
                  "plan_hash": meta.get("plan_hash"), "exported_at": datetime.now(timezone.utc).isoformat(),
                  **(provenance or {}), **summary}
        (staging / PROVENANCE_FILE).write_text(json.dumps(record, indent=2))
        normal_modes(staging)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {**record, "output_dir": str(out)}


__all__ = ["COMPRESSED_TENSORS", "ExportError", "PROVENANCE_FILE", "WRITERS", "export_checkpoint"]
