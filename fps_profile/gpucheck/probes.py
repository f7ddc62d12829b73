"""Scratch memory of the reductions FPS and Wanda use, measured on the device at hand.

For ViT-shaped activations ``[batch, 197, C]``: the bytes a reduction allocates beyond its
output (``max_memory_allocated`` on CUDA, exact live bytes on the CPU), next to the staging
buffer :mod:`fps_profile.sim.reductions` predicts for this GPU, for

* ``norm1``: ``torch.linalg.vector_norm(x, 1, dim=(0, 1))``, as FPS reduces a linear input;
* ``sum``: ``x.sum((0, 1))``, as autograd reduces a linear layer's bias gradient;
* ``chunked``: :func:`~fps_profile.selection.selectors.conv_stats.chunked_norm`, as FPS and Wanda
  reduce a contiguous linear input: two steps, no global-memory staging buffer
  (docs/sim.md, "Reductions on CUDA").
"""

from __future__ import annotations

import torch

from fps_profile.selection.selectors.conv_stats import chunked_norm
from fps_profile.trackers.cuda import round_size
from fps_profile.sim.reductions import GpuShape

CUDA_SHAPES = [(b, 197, c) for c in (192, 384, 768, 1024, 3072, 4096) for b in (16, 64)]
CPU_SHAPES = [(2, 197, 192), (2, 50, 64)]


OPS = {
    "norm1": lambda x: torch.linalg.vector_norm(x, 1, dim=(0, 1)),
    "sum": lambda x: x.sum((0, 1)),
    "chunked": lambda x: chunked_norm(x, 1),
}


def _extra_bytes(fn, x: torch.Tensor) -> tuple[int, int]:
    """Peak bytes allocated while ``fn(x)`` runs beyond what was live before, and its output's bytes."""
    if x.is_cuda:
        from fps_profile.trackers import CudaAllocatorPeak

        with CudaAllocatorPeak(x.device) as peak:
            out = fn(x)
        return peak.peak_allocated - peak.baseline, round_size(out.untyped_storage().nbytes())
    from fps_profile.trackers import LiveTensorBytes

    with LiveTensorBytes("cpu") as live:
        out = fn(x)
    return live.peak - live.baseline, out.untyped_storage().nbytes()


def card_target(gpu: GpuShape):
    """The sim target of this machine's first GPU, with its real SM count."""
    import dataclasses

    from fps_profile.measure.targets import get_target, target_for_device_name

    base = target_for_device_name(torch.cuda.get_device_name()) or get_target("sim")
    return dataclasses.replace(base, sm_count=gpu.sm_count)


def predicted_scratch(shape, dtype: torch.dtype, fn, target) -> int:
    """The same probe on a sim target with the reduction scratch counted: its peak beyond input and output."""
    from fps_profile.sim import Simulator

    with Simulator(target, reduction_scratch=True) as sim:
        x = torch.empty(shape, dtype=dtype)
        before = sim.tracker.current
        out = None

        def probe():
            nonlocal out
            out = fn(x)

        peak = sim.measure(probe).peak_bytes
        return peak - before - round_size(out.untyped_storage().nbytes())


def run(device: str) -> list[dict]:
    """Every probe on ``device`` (``cuda`` or ``cpu``): one dict per shape, dtype and operation."""
    dev = torch.device("cuda" if device.startswith("cuda") else "cpu")
    gpu = GpuShape.of(dev) if dev.type == "cuda" else None
    target = card_target(gpu) if gpu else None
    shapes = CUDA_SHAPES if gpu else CPU_SHAPES
    out = []
    for dtype in (torch.float32, torch.bfloat16):
        for shape in shapes:
            if dtype == torch.bfloat16 and shape[0] != 64 and gpu:
                continue
            x = torch.randn(shape, device=dev).to(dtype)
            for name, fn in OPS.items():
                extra, output = _extra_bytes(fn, x)
                predicted = predicted_scratch(shape, dtype, fn, target) if gpu and name != "chunked" else None
                out.append({"shape": list(shape), "dtype": str(dtype).removeprefix("torch."), "op": name,
                            "input_bytes": x.numel() * x.element_size(), "output_bytes": output,
                            "scratch_bytes": extra - output, "predicted_bytes": predicted})
            del x
    return out
