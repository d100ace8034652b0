"""`qrecipe export SOURCE OUT_DIR [--format compressed-tensors] [KEY=VALUE...]`

SOURCE is a variant id (or unique prefix) from the registry, or a checkpoint folder (a run's
model/ folder, or the run folder holding it). Exporting a registered variant records the
export on its MLflow run (tag qrecipe.export.<format> = OUT_DIR) where tracking is on.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from qrecipe.engine.errors import ConfigError

# The formats `--format` takes (engine/export WRITERS; a test keeps the two in step). Named here
# so that building the command line does not import torch and compressed-tensors.
FORMATS = ("compressed-tensors",)

log = logging.getLogger(__name__)


def _variant_checkpoint(ref: str, overrides: list[str]):
    """(checkpoint folder, variant, settings) of a registered variant."""
    from qrecipe.engine.export.compressed_tensors import ExportError

    from .artifacts import checkpoint_dir
    from .commands import open_for, store_settings_for
    from .queries import find_variant

    settings = store_settings_for(overrides)
    variant = find_variant(open_for(settings, catch_up=False), ref)
    folder = checkpoint_dir(variant.output_dir)
    if folder is None:
        raise ExportError(f"variant {variant.id} has no checkpoint under {variant.output_dir} (its run had "
                          f"run.save_checkpoint=false, or the folder was moved); run its recipe again to write one")
    return folder, variant, settings


def _record_on_run(settings, variant, fmt: str, out: str) -> None:
    """Tag the variant's MLflow run with the export (best effort: the export itself is done)."""
    if not settings.tracking.enabled or not variant.mlflow_run_id:
        return
    from .tracking import client_for

    try:
        client_for(settings).set_tag(variant.mlflow_run_id, f"qrecipe.export.{fmt}", out)
    except Exception as e:  # noqa: BLE001
        log.warning("exported, but tagging MLflow run %s failed: %s", variant.mlflow_run_id, e)


def cmd_export(args) -> int:
    from qrecipe.engine.export import export_checkpoint

    if "=" in args.source or "=" in args.out:
        raise ConfigError("export: give SOURCE and OUT_DIR first, then KEY=VALUE overrides, e.g. "
                          "qrecipe export 3f9a out/3f9a-ct registry.url=...")
    source = Path(args.source)
    variant = settings = None
    if source.is_dir():
        src = source / "model" if (source / "model").is_dir() else source
        provenance = {}
    else:
        src, variant, settings = _variant_checkpoint(args.source, args.overrides)
        provenance = {"variant_id": variant.id, "recipe": variant.recipe_name, "target": variant.target,
                      "mlflow_run_id": variant.mlflow_run_id}
    record = export_checkpoint(src, args.out, args.format, provenance, parents=args.parents)
    if variant is not None:
        _record_on_run(settings, variant, args.format, record["output_dir"])
    if args.json:
        print(json.dumps(record))
        return 0
    groups = "; ".join(f"{name}: {', '.join(g['schemes'])} as {g['format']} ({g['layers']} layers)"
                       for name, g in record["config_groups"].items())
    print(f"exported {record['output_dir']} ({args.format}) from {record['source_checkpoint']}")
    print(f"  config groups: {groups}")
    print(f"  ignored (kept in float): {', '.join(record['ignore']) or 'none'}")
    return 0


def add_export_command(sub, common_flags) -> None:
    p = sub.add_parser("export", help="write a variant's checkpoint in a format serving engines load (vLLM, "
                                      "transformers)")
    p.add_argument("--format", default="compressed-tensors", choices=FORMATS,
                   help="compressed-tensors: safetensors + quantization_config that vLLM and transformers read")
    p.add_argument("--json", action="store_true", help="print the provenance record as JSON")
    p.add_argument("--parents", action="store_true", help="create OUT_DIR's missing parent folders (default: refuse)")
    common_flags(p)
    p.add_argument("source", metavar="VARIANT|CHECKPOINT", help="a variant id (or prefix), or a checkpoint folder")
    p.add_argument("out", metavar="OUT_DIR", help="the new folder to write (must not exist)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides (registry.url=...)")
    p.set_defaults(func=cmd_export)
