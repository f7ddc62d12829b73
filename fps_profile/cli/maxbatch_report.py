"""``fps-profile sweep --max-batch``: the search driver and its table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fps_profile.errors import UserError


def run_max_batch(grid, out: Path, executor, args: argparse.Namespace) -> int:
    import dataclasses

    from fps_profile.maxbatch import find_max_batch
    from fps_profile.results import append_result
    from fps_profile.summary import markdown_table
    from fps_profile.sweep import _effective, _row_line, check_output, latest
    from fps_profile.units import fmt_bytes

    grid.validate(local_devices=not getattr(executor, "remote", False))
    have = latest(check_output(out))
    body = []
    for device in grid.devices:
        budget = grid.memory_budget
        if budget is None and device.startswith("sim"):
            from fps_profile.sim.targets import get_target

            budget = get_target(device).memory_bytes  # the simulated card's memory
        if budget is None:
            if not device.startswith("cuda"):
                raise UserError(f"--max-batch on {device} needs --memory-budget (e.g. 8GiB)")
            import torch

            budget = torch.cuda.get_device_properties(torch.device(device)).total_memory
        # Every knob setting that changes the series (one search for fps under --checkpointing off,on: FPS
        # has no backward to checkpoint).
        series = [(phase, s, k) for phase, s in grid.series() if phase != "train_floor"
                  for k in dict.fromkeys(_effective(k, phase, s, 1 << 62) for k in grid.knob_settings())]
        for dtype in grid.dtypes:
            for model, seq in ((m, n) for m in grid.models for n in grid.seq_lens_for(m)):
                for phase, selector, setting in series:
                    proto = dataclasses.replace(grid, devices=[device], dtypes=[dtype], models=[model],
                                                memory_budget=budget, repeats=1)

                    def measure(batch: int, phase=phase, selector=selector, proto=proto, seq=seq, setting=setting):
                        cell = proto._cell(model, batch, dtype, device, phase, selector, setting, seq_len=seq)
                        row = have.get(cell.key())
                        if row is None or (args.retry_failed and row.status in ("error", "timeout")):
                            row = next(iter(executor.run([cell], args.timeout)))
                            append_result(out, row)
                            have[cell.key()] = row
                            if not args.no_progress:
                                print(_row_line(row), file=sys.stderr)
                        return row

                    res = find_max_batch(measure, budget, start=min(grid.batch_sizes))
                    who = selector or ("floor" if phase == "inference" else "full")
                    body.append([device, dtype, f"{model} seq={seq}" if seq else model,
                                 f"{phase}:{who}{setting.label()}",
                                 str(res.max_batch) if res.max_batch else "none",
                                 fmt_bytes(res.peak_bytes), fmt_bytes(budget),
                                 res.error or (f"oom at {res.first_oom}" if res.first_oom else "cap reached")])
    print(markdown_table(["device", "dtype", "model", "what", "max batch", "peak", "budget", "note"], body))
    return 0
