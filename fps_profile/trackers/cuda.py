"""CUDA caching-allocator peaks (what optimum-benchmark and torchbench report)."""

from __future__ import annotations

import gc

import torch

#: The caching allocator rounds every request up to a multiple of this (c10/cuda/CUDACachingAllocator.cpp).
MIN_BLOCK = 512


def round_size(nbytes: int) -> int:
    """Bytes of the block a request of ``nbytes`` gets from the CUDA caching allocator (0 stays 0)."""
    if nbytes <= 0:
        return 0
    return max(MIN_BLOCK, -(-nbytes // MIN_BLOCK) * MIN_BLOCK)


class CudaAllocatorPeak:
    """``max_memory_allocated`` / ``max_memory_reserved`` over a region.

    On entry: garbage-collect, empty the cache, reset the peak statistics and
    synchronise; on exit: synchronise and read both peaks.

    Args:
        device: The CUDA device.

    Attributes:
        peak_allocated: Bytes, after exit.
        peak_reserved: Bytes, after exit.
        baseline: ``memory_allocated`` on entry, bytes.
    """

    def __init__(self, device: torch.device | str = "cuda") -> None:
        self.device = torch.device(device)
        self.peak_allocated = self.peak_reserved = self.baseline = 0

    def __enter__(self) -> CudaAllocatorPeak:
        gc.collect()
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        self.baseline = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc) -> None:
        torch.cuda.synchronize(self.device)
        self.peak_allocated = torch.cuda.max_memory_allocated(self.device)
        self.peak_reserved = torch.cuda.max_memory_reserved(self.device)


def limit_memory(device: torch.device, budget_bytes: int) -> None:
    """Make the caching allocator raise OOM beyond ``budget_bytes`` on ``device``."""
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, budget_bytes / total), device)


def record_extra_run(fn, model, *, inputs=(), optimizer=None, device_type: str = "cuda",
                     round_bytes=None):
    """Run ``fn`` once more under a live-tensor tracker and a :class:`PeakBreakdown` (the cuda backend's extra run).

    On cuda the measured run has no dispatch mode (one changes eager choices, e.g.
    gradients accumulate out of place), so the breakdown comes from this labelled,
    separate run; its total is the live tensor bytes of that run, rounded as
    ``round_bytes`` says, and can differ a little from the measured peak.
    """
    from fps_profile.trackers.breakdown import PeakBreakdown
    from fps_profile.trackers.tensor import LiveTensorBytes

    with LiveTensorBytes(device_type, round_bytes=round_bytes) as live, \
            PeakBreakdown(live, model, inputs=inputs, optimizer=optimizer) as bd:
        out = fn()
        del out
        if device_type == "cuda":
            torch.cuda.synchronize()
    return bd
