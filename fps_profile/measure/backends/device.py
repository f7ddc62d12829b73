"""The measurement protocol on a real device, shared by the cpu and cuda backends.

Each backend supplies the trackers of the memory-tracked run (:meth:`DeviceBackend.trackers`)
and whatever it measures after the timing (:meth:`DeviceBackend.after`); the rest is here, once.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable

import torch

from fps_profile.measure.backends import Backend

RANKS_TIMEOUT_S = 7 * 86400.0


class DeviceBackend(Backend):
    """A backend that runs the phase on a torch device and times it."""

    def torch_device(self, device: str) -> torch.device:
        """The torch device of ``device`` (checked to exist)."""
        self.check(device)
        return torch.device(device)

    def trackers(self, stack: contextlib.ExitStack, device: torch.device, cell, model, batches,
                 optimizer) -> Callable:
        """Enter the memory-tracked run's trackers on ``stack``; returns ``fill(row)``, which copies
        their figures into the row after the run."""
        raise NotImplementedError

    def after(self, fn, device: torch.device, model, batches, optimizer, row) -> None:
        """Runs after everything else is measured (extra runs that would disturb the others)."""

    def limit(self, device: torch.device, memory_budget: int | None) -> None:
        """Make ``memory_budget`` the device's size, where the device can enforce it."""

    def train_mask(self, model, batches, cell, budget, options):
        mask = super().train_mask(model, batches, cell, budget, options)
        gc.collect()
        return mask

    def measure(self, cell, row) -> None:
        from fps_profile.measure.distributed.rank_phases import is_sharded_cell

        if is_sharded_cell(cell):  # FSDP2 over world_size ranks, each its own process (and GPU)
            from fps_profile.measure.distributed.cells import measure_cell

            # The sweep's time-out kills this worker, and its ranks die with it: no limit of their own here.
            measure_cell(cell, row, timeout_s=RANKS_TIMEOUT_S)
            return
        from fps_profile.measure.runner import build_cell
        from fps_profile.models import create_model, parse_dtype, synthetic_batches
        from fps_profile.selection.mask import Mask
        from fps_profile.trackers import RssPeak, median, time_repeats

        device = self.torch_device(cell.device)
        torch.manual_seed(0)
        model = create_model(cell.model, device=device, dtype=parse_dtype(cell.dtype), image_size=cell.image_size)
        batches = synthetic_batches(model, cell.batch_size, cell.num_batches, image_size=cell.image_size,
                                    seq_len=cell.seq_len)
        self.limit(device, cell.memory_budget)
        fn = build_cell(cell, model, batches, self, row)
        for _ in range(cell.warmup):
            fn()
        optimizer = getattr(fn, "optimizer", None)
        with contextlib.ExitStack() as stack:
            fill = self.trackers(stack, device, cell, model, batches, optimizer)
            rss = stack.enter_context(RssPeak())
            out = fn()
        fill(row)
        row.rss_peak_bytes = rss.peak
        if isinstance(out, Mask):
            row.params_trainable = out.stats().trainable
        del out
        row.wall_times_s = time_repeats(fn, device, warmup=0, repeats=cell.repeats)
        row.wall_time_s = median(row.wall_times_s)
        self.after(fn, device, model, batches, optimizer, row)
