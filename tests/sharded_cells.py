"""What tests/test_sim_sharded.py runs on real CPU ranks (``run_ranks`` imports this module by name).

:func:`measure_cells` measures a list of cells, one after the other, on the ranks of one
``run_ranks`` call (one spawn for many cells), each exactly as the runner's sharded path
does (:func:`fps_profile.measure.distributed.cells.measure_rank`).
"""

from __future__ import annotations

import gc


def measure_cells(rank: int, world_size: int, cells_json: list[str]) -> list[dict]:
    """Every cell's per-rank result (peak, trainable count, local parameters) on this rank."""
    from fps_profile.measure.distributed.cells import measure_rank

    out = []
    for cell_json in cells_json:
        got = measure_rank(rank, world_size, cell_json)
        out.append({"peak": got["figures"]["peak_allocated_bytes"], "trainable": got["trainable"],
                    "params_local": got["params_local"]})
        gc.collect()  # nothing of one cell is alive when the next one's tracker scans for live tensors
    return out
