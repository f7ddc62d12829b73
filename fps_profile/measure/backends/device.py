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

    def finetune_mask(self, model, batches, cell, budget, options):
        """The selection, run once under the memory-tracked run's trackers: its peak as the
        ``select`` phase measures it (without that phase's warm-up)."""
        mask_of = super().finetune_mask
        scratch = cell.empty_row()
        with contextlib.ExitStack() as stack:
            fill = self.trackers(stack, self.torch_device(cell.device), cell, model, batches, None)
            mask, _ = mask_of(model, batches, cell, budget, options)
        fill(scratch)  # (the tracked step's tracker collects garbage on entry: no gc.collect here)
        return mask, scratch.peak_allocated_bytes

    def measure(self, cell, row) -> None:
        from fps_profile.measure.distributed.rank_phases import is_sharded_cell

        if is_sharded_cell(cell):  # FSDP2 over world_size ranks, each its own process (and GPU)
            from fps_profile.measure.distributed.cells import measure_cell

            # The sweep's time-out kills this worker, and its ranks die with it: no limit of their own here.
            measure_cell(cell, row, timeout_s=RANKS_TIMEOUT_S)
            return
        from fps_profile.measure.inputs import build_inputs, cell_data
        from fps_profile.measure.runner import build_cell
        from fps_profile.models import parse_dtype
        from fps_profile.rows.phases import trains
        from fps_profile.selection.mask import Mask
        from fps_profile.trackers import RssPeak, median, time_repeats

        device = self.torch_device(cell.device)
        built = build_inputs(cell, device, parse_dtype(cell.dtype))  # seeded with cell.seed
        row.env.update(built.provenance)
        model, batches = built.model, built.batches
        self.limit(device, cell.memory_budget)
        # The data set made the batches; from here on it is never held while anything is measured (on the
        # cpu its tensors would count as live bytes): a finetune's feed reads it again after its selection.
        built.data = None
        cell_data.cache_clear()
        fn = build_cell(cell, model, batches, self, row)
        cell_data.cache_clear()
        if trains(cell.phase):  # it changes its model: one run, its own protocol
            from fps_profile.measure.training import measure_training

            del built, batches  # the selection's batches: done with (its steps feed their own)
            return measure_training(self, fn, device, cell, model, row)
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
