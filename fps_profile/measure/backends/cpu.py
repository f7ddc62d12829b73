"""The ``cpu`` backend: the exact peak of live tensor bytes, FLOPs and the breakdown in the measured run."""

from __future__ import annotations

from fps_profile.errors import UserError
from fps_profile.measure.backends.device import DeviceBackend


class CpuBackend(DeviceBackend):
    """Measures on this machine's CPU with :class:`~fps_profile.trackers.LiveTensorBytes`."""

    name = "cpu"
    # A CPU runs whatever else the machine runs (other sweeps, builds, frequency scaling): two
    # identical sweeps differ by factors, while the peak of live tensor bytes repeats to the byte.
    time_noise = "wall times on a CPU are noise (shared with other processes, frequency scaling)"

    def check(self, device: str, *, local: bool = True) -> None:
        import torch

        try:
            kind = torch.device(device).type
        except RuntimeError:
            kind = None
        if kind != "cpu":
            raise UserError(f"unknown device {device!r} (use cpu, cuda, cuda:N or sim)")

    def env(self, device: str) -> dict:
        from fps_profile.measure.env import cpu_name

        return {"device_name": cpu_name()}

    def trackers(self, stack, device, cell, model, batches, optimizer):
        from fps_profile.trackers import LiveTensorBytes
        from fps_profile.trackers.breakdown import PeakBreakdown
        from fps_profile.trackers.flops import FlopCount

        # LiveTensorBytes is a dispatch mode already, so counting FLOPs in this run changes nothing.
        flops = stack.enter_context(FlopCount())
        live = stack.enter_context(LiveTensorBytes("cpu", budget_bytes=cell.memory_budget))
        explained = stack.enter_context(PeakBreakdown(live, model, inputs=batches, optimizer=optimizer))

        def fill(row) -> None:
            row.peak_allocated_bytes = live.peak
            row.flops = flops.total
            explained.fill(row)

        return fill
