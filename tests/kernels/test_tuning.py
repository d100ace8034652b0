"""Every candidate tile the autotuner may choose computes the same result, and the tables
cover every M."""

from __future__ import annotations

import math

import pytest
import torch

from qrecipe.kernels import tuning
from qrecipe.kernels.ops import triton_linear

# table -> cases run with each of its tiles
TABLES = {"weight-only": (tuning.WEIGHT_ONLY, ("w4a16-g128-asym", "w8a16-channel-sym")),
          "scaled-mm": (tuning.SCALED_MM, ("w8a8-channel-sym-dynamic", "fp8-channel-sym-static"))}


def test_rows_cover_every_m_in_order():
    for table, _ in TABLES.values():
        assert table[-1][0] == math.inf
        assert [m for m, _ in table] == sorted(m for m, _ in table)


def test_auto_split_k_fills_the_gpu_but_keeps_four_k_blocks_per_program():
    assert tuning.auto_split_k(tiles=256, k_blocks=64, processors=132) == 2
    assert tuning.auto_split_k(tiles=16, k_blocks=64, processors=132) == 16
    assert tuning.auto_split_k(tiles=16, k_blocks=8, processors=132) == 2
    assert tuning.auto_split_k(tiles=1000, k_blocks=64, processors=132) == 1


@pytest.mark.parametrize("table_name", TABLES)
def test_every_candidate_tile_matches_the_reference(table_name, device, case_named, monkeypatch):
    table, case_ids = TABLES[table_name]
    tiles = list(dict.fromkeys(t for _, row in table for t in row))
    torch.manual_seed(0)
    for case in map(case_named, case_ids):
        k = case.in_features(3, 264)
        x = torch.randn(19, k, dtype=torch.float16, device=device)
        buffers = case.make(72, k, x)
        ref = case.fmt.reference_linear(x, buffers, case.params, None).float()
        for tile in tiles:
            monkeypatch.setattr(tuning, "pick", lambda *args, tile=tile: tile)
            y = triton_linear(case.fmt.name, x, buffers, case.params.group_size, None).float()
            torch.testing.assert_close(y, ref, rtol=2e-3, atol=2e-3 * ref.abs().max(), msg=f"{case.id} {tile}")


def test_the_autotuner_skips_tiles_that_do_not_fit_and_says_so_but_never_hides_a_broken_kernel(monkeypatch):
    import triton.testing
    from triton.runtime.errors import OutOfResources

    monkeypatch.setenv("QRECIPE_TRITON_AUTOTUNE", "1")
    monkeypatch.setattr(tuning, "TUNED", {})
    monkeypatch.setattr(tuning, "SKIPPED", {})
    # GPU timing is the boundary here: each call runs the launch and reports its tile's made-up time
    monkeypatch.setattr(triton.testing, "do_bench", lambda fn, **kw: fn())
    big, small = tuning.candidates(tuning.SCALED_MM, 4096)[:2]

    def launch(tile):
        if tile == big:
            raise OutOfResources(required=300_000, limit=232_448, name="shared memory")
        return 1.0 if tile == small else 2.0

    assert tuning.pick("scaled_mm", tuning.SCALED_MM, ("k",), 4096, launch) == small
    [skipped] = [row for row in tuning.tuned_as_json() if "skipped" in row]
    assert "OutOfResources" in skipped["skipped"] and skipped["block_n"] == big.block_n

    def broken(tile):
        raise ValueError("a kernel bug")

    with pytest.raises(ValueError, match="a kernel bug"):
        tuning.pick("scaled_mm", tuning.SCALED_MM, ("other key",), 4096, broken)
