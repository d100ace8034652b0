"""Every kernel variant compiles for an H100 (sm_90) with the installed Triton, with no GPU
here: the interpreter runs the numerics, this checks what only the compiler sees (layouts, dot
operand types, Triton API of the installed version) and that the tensor-core paths are used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("compile_for_gpu.py")


def compile_report(capability: int) -> list[dict]:
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    out = subprocess.run([sys.executable, str(SCRIPT), str(capability)], capture_output=True, text=True, env=env,
                         timeout=300)
    if out.returncode != 0:
        pytest.skip(f"Triton cannot compile for a GPU target here: {out.stderr.strip().splitlines()[-1:]}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def test_every_kernel_compiles_for_sm90_with_wgmma_for_wide_tiles():
    report = compile_report(90)
    failed = [(r["name"], r["error"]) for r in report if not r["ok"]]
    assert not failed
    assert len(report) >= 20
    # 16-bit dots, and 8-bit dots on tiles of 64+ rows, must use Hopper's warpgroup MMA
    wide = [r for r in report if r["name"].startswith(("w4a16", "w8a16")) or r["name"].endswith("-m128")]
    assert wide and all(r["mma"] == "wgmma" for r in wide), [(r["name"], r["mma"]) for r in wide]
