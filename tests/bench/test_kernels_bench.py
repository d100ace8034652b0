"""bench/kernels.py still runs (a smoke run on CPU): its figures are not checked, only that
every row it promises is produced, with the dense baseline timed in the same run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "kernels.py"


def test_cpu_quick_run_reports_each_backend_against_dense(tmp_path):
    out = tmp_path / "rows.json"
    p = subprocess.run([sys.executable, str(BENCH), "--device", "cpu", "--quick", "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    rows = json.loads(out.read_text())["rows"]
    kernels = {r["kernel"] for r in rows}
    assert {"bfloat16 F.linear", "float32 F.linear", "cpu-int4pack w4a16 (bfloat16 x)",
            "cpu-int8pack w8a16 (bfloat16 x)", "torch w8a8 (float32 x)"} <= kernels
    assert all(r["x_vs_dense"] > 0 and r["us"] > 0 for r in rows)
    assert all(r["x_vs_dense"] == 1.0 for r in rows if r["kernel"].endswith("F.linear"))
