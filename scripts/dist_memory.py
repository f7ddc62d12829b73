"""Per-rank peak live tensor bytes of FSDP2 cells on CPU ranks, beside the single-process measurement.

    .venv/bin/python scripts/dist_memory.py test_vit 8
    .venv/bin/python scripts/dist_memory.py hf:llama-tiny 8 32

One JSON line per phase: ``single`` (the runner, no FSDP), ``ws1``/``ws2`` (FSDP2 on 1 and 2
ranks, every rank's peak) and ``ws2-offload`` (CPUOffloadPolicy), with the trainable count.
Batch size is the global batch; each of 2 ranks gets half.
"""

from __future__ import annotations

import json
import sys

from fps_profile.measure.distributed.cells import measure_cell
from fps_profile.rows.cell import Cell
from fps_profile.measure.runner import measure


def main(argv: list[str]) -> None:
    model, batch = argv[0], int(argv[1])
    seq_len = int(argv[2]) if len(argv) > 2 else None
    cells = [Cell(model, batch, "select", "fps", seq_len=seq_len, repeats=1),
             Cell(model, batch, "select", "gps", seq_len=seq_len, repeats=1),
             Cell(model, batch, "train_step", "fps", seq_len=seq_len, repeats=1),
             Cell(model, batch, "train_step", None, seq_len=seq_len, repeats=1)]
    for cell in cells:
        row = {"model": model, "phase": cell.phase, "selector": cell.selector or "full",
               "single": measure(cell).peak_allocated_bytes}
        for world_size, offload in ((1, False), (2, False), (2, True)):
            got = measure_cell(cell, world_size, offload=offload, timeout_s=900)
            key = f"ws{world_size}" + ("-offload" if offload else "")
            row[key] = got.env["ranks"]["peaks_bytes"] if got.status == "ok" else f"{got.status}: {got.error}"
            row[key + "-trainable"] = got.params_trainable
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
