"""Child process of the streaming memory tests: quantize a model streamed into a checkpoint and
print {"rss_before", "peak_rss", "seconds"} as JSON on the last stdout line.

    python stream_child.py '{"overrides": [...], "out": DIR}'

RSS before is read after the imports, the config, the plan and the model's skeleton on the meta
device (which imports transformers' modeling code: planning may not, its model description being
cached, engine/models/structure_cache.py): what is left is the run's own memory. The peak is the kernel's high-water mark
of this process (VmHWM: anonymous and file-backed pages together, so a mapped checkpoint counts).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def main(request: dict) -> dict:
    import torch

    from qrecipe.engine.config import compose, load_settings
    from qrecipe.engine.models.loading import build_skeleton, load_config, resolve_dtype
    from qrecipe.engine.planning import build_plan
    from qrecipe.engine.streaming import quantize_to_checkpoint

    settings = load_settings(compose(request["overrides"]))
    device = torch.device("cpu")
    plan, _ = build_plan(settings, device)
    dtype = resolve_dtype(settings.model.dtype, device)
    build_skeleton(load_config(settings.model, Path(settings.paths.cache)))  # the modeling code imported
    torch.ones(64, 64) @ torch.ones(64, 64)  # thread pools up before the reading
    before = status("VmRSS")
    start = time.perf_counter()
    report = quantize_to_checkpoint(settings, plan, Path(request["out"]), device, dtype,
                                    lambda msg: print(msg, file=sys.stderr, flush=True))
    return {"rss_before": before, "peak_rss": status("VmHWM"), "seconds": time.perf_counter() - start,
            "block_seconds": report.block_seconds, "notes": report.notes,
            "estimated_host_bytes": plan.execution["peak_host_bytes"]}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))), flush=True)
