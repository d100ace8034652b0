"""Launch configurations of the Triton kernels: explicit tables by batch size M, and an opt-in
autotuner over the same candidates.

By default a kernel launches with the first candidate of its row, so a run is reproducible and
does no timing. With QRECIPE_TRITON_AUTOTUNE=1 (what `bench/kernels.py --autotune` sets) the
candidates of the row are timed once per key on the GPU and the fastest is kept in TUNED; the
bench writes TUNED into its JSON, so a choice can be read and pinned as the first candidate here.

The tables are starting points for an H100 chosen from the shape of the problem, not yet
measured (bench/RESULTS.md): small M streams weights through narrow tiles with split-K to fill
the GPU; large M uses tensor-core tiles of 128 with 8 warps and 3 pipeline stages.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass
from typing import Callable

from .triton_support import cdiv

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tile:
    block_m: int
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 3
    split_k: int = 1  # 0: choose from the grid size (auto_split_k)

    def as_dict(self) -> dict:
        return asdict(self)


# (largest M of the row, candidates); the first candidate is the default.
Table = tuple[tuple[float, tuple[Tile, ...]], ...]

# Weight-only kernels compute acc[N, M] (weights are the MMA's wide side; M the narrow one).
WEIGHT_ONLY: Table = (
    (16, (Tile(16, 64, 128, 4, 4, split_k=0), Tile(16, 128, 128, 4, 4, split_k=0), Tile(16, 32, 256, 4, 4, split_k=0),
          Tile(16, 64, 128, 4, 4))),
    (64, (Tile(64, 64, 128, 4, 4, split_k=0), Tile(32, 128, 128, 4, 4, split_k=0), Tile(64, 128, 64, 4, 3))),
    (256, (Tile(64, 128, 64, 4, 4), Tile(128, 128, 64, 8, 3), Tile(64, 256, 64, 8, 3))),
    (math.inf, (Tile(128, 128, 64, 8, 3), Tile(128, 256, 64, 8, 3), Tile(256, 128, 64, 8, 3), Tile(64, 128, 64, 4, 4))),
)

# int8 / fp8 GEMMs compute acc[M, N] with 8-bit operands (K tiles of 128 bytes).
SCALED_MM: Table = (
    (16, (Tile(16, 64, 128, 4, 4), Tile(16, 128, 128, 4, 4))),
    (64, (Tile(64, 64, 128, 4, 4), Tile(32, 128, 128, 4, 4))),
    (256, (Tile(64, 128, 128, 4, 4), Tile(128, 128, 128, 8, 3))),
    (math.inf, (Tile(128, 128, 128, 8, 3), Tile(128, 256, 128, 8, 3), Tile(256, 128, 128, 8, 3),
                Tile(128, 128, 64, 4, 4))),
)

TUNED: dict[tuple, Tile] = {}
# Candidates the autotuner could not launch on this GPU, with the reason: (key, tile) -> reason
SKIPPED: dict[tuple, str] = {}


def candidates(table: Table, m: int) -> tuple[Tile, ...]:
    return next(tiles for max_m, tiles in table if m <= max_m)


def autotuning() -> bool:
    return os.environ.get("QRECIPE_TRITON_AUTOTUNE", "0") == "1"


def auto_split_k(tiles: int, k_blocks: int, processors: int) -> int:
    """Split K until the grid has about two programs per processor, keeping at least 4 K blocks
    per program so each still streams enough bytes to hide memory latency."""
    split = max(1, cdiv(2 * processors, max(tiles, 1)))
    return max(1, min(split, k_blocks // 4, 16))


def pick(kernel: str, table: Table, key: tuple, m: int, launch: Callable[[Tile], None]) -> Tile:
    """The tile to launch with: the row's default, or with autotuning on, the fastest candidate
    (timed once per key with `launch`, which runs the kernel with a given tile)."""
    tiles = candidates(table, m)
    if not autotuning() or len(tiles) == 1:
        return tiles[0]
    full_key = (kernel, *key)
    if full_key not in TUNED:
        from triton.runtime.errors import OutOfResources
        from triton.testing import do_bench

        times = {}
        for tile in tiles:
            try:
                times[tile] = do_bench(lambda: launch(tile), warmup=5, rep=20, return_mode="median")
            except OutOfResources as e:  # this tile does not fit this GPU (shared memory, registers)
                SKIPPED[(full_key, tile)] = f"{type(e).__name__}: {e}"
                log.warning("autotune %s %s: candidate %s skipped (%s)", kernel, key, tile, e)
        if not times:  # any other failure is a bug in the kernel, and raises from do_bench above
            raise RuntimeError(f"autotune {kernel} {key}: no candidate fits this GPU "
                               f"({'; '.join(SKIPPED[(full_key, t)] for t in tiles)})")
        TUNED[full_key] = min(times, key=times.get)
    return TUNED[full_key]


def tuned_as_json() -> list[dict]:
    """What autotuning chose per key, and the candidates it skipped with their reasons."""
    chosen = [{"kernel": k[0], "key": list(k[1:]), **tile.as_dict()} for k, tile in TUNED.items()]
    skipped = [{"kernel": k[0], "key": list(k[1:]), **tile.as_dict(), "skipped": why}
               for (k, tile), why in SKIPPED.items()]
    return chosen + skipped
