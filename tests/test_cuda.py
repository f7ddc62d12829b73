"""The cuda backend on a real GPU: allocator peaks to the byte, NVML, a sweep row's fields.

Marked ``cuda``: skipped without a GPU; ``scripts/gpu_check.sh`` runs them with ``pytest -m cuda``.
"""

from __future__ import annotations

import time

import pytest
import torch

from fps_profile.sim.allocator import CachingAllocator
from fps_profile.trackers import CudaAllocatorPeak, NvmlSampler

pytestmark = pytest.mark.cuda
MIB = 1 << 20


def _fresh(dev: torch.device) -> None:
    torch.cuda.synchronize(dev)
    torch.cuda.empty_cache()


def test_allocator_peak_of_known_allocations_to_the_byte():
    """Block sizes, not requested bytes: rounding to 512, splitting, and a large block taken whole.

    Worked by hand from c10/cuda/CUDACachingAllocator.cpp (docs/sim.md): the 12 MiB + 1 request
    takes the 13 MiB remainder of the first segment whole, since splitting would leave less than 1 MiB.
    """
    dev = torch.device("cuda")
    _fresh(dev)
    with CudaAllocatorPeak(dev) as peak:
        a = torch.empty(3 * MIB, dtype=torch.uint8, device=dev)  # 3 MiB, split off a new 20 MiB segment
        b = torch.empty(1000, dtype=torch.uint8, device=dev)  # small pool: 1024 bytes
        c = torch.empty(MIB, dtype=torch.float32, device=dev)  # 4 MiB, split off the same segment (13 MiB left)
        del a
        d = torch.empty(12 * MIB + 1, dtype=torch.uint8, device=dev)  # the 13 MiB block, unsplit
        del b, c, d
    assert peak.peak_allocated - peak.baseline == 4 * MIB + 1024 + 13 * MIB
    # the sim's allocator model gives the same figure for the same sequence
    model = CachingAllocator()
    a, b, c = model.malloc(3 * MIB), model.malloc(1000), model.malloc(4 * MIB)
    model.free(a)
    d = model.malloc(12 * MIB + 1)
    assert model.peak_allocated == peak.peak_allocated - peak.baseline
    for block in (b, c, d):
        model.free(block)


def test_allocator_peak_counts_a_freed_temporary():
    dev = torch.device("cuda")
    x = torch.ones(256, 1024, device=dev)  # 1 MiB, allocated before the region
    with CudaAllocatorPeak(dev) as peak:
        y = (x * 2).sum()  # a 1 MiB temporary, freed at once
    assert peak.baseline >= x.nbytes
    assert peak.peak_allocated - peak.baseline >= x.nbytes
    del y


def test_nvml_sampler_sees_a_known_allocation():
    dev = torch.device("cuda")
    _fresh(dev)
    sampler = NvmlSampler(torch.cuda.current_device(), interval_s=0.005)
    if not sampler.available:
        pytest.fail("NVML could not be initialised on a CUDA machine (is nvidia-ml-py installed?)")
    with NvmlSampler(torch.cuda.current_device(), interval_s=0.005) as idle:
        time.sleep(0.05)
    size = 1 << 30
    with sampler:
        t = torch.empty(size, dtype=torch.uint8, device=dev)
        t.fill_(1)
        torch.cuda.synchronize(dev)
        time.sleep(0.1)  # several sampling periods
        del t
        _fresh(dev)
    # cudaMalloc of 1 GiB is visible to the driver (other processes on the card can add to it)
    grown = sampler.peak_used - idle.peak_used
    assert size <= grown < size + 256 * MIB


def test_cuda_sweep_row_fields(tmp_path):
    from fps_profile.rows.store import read_results
    from fps_profile.cli import main

    out = tmp_path / "rows.jsonl"
    code = main(["sweep", "--device", "cuda", "--model", "test_vit", "--batch-size", "2", "--selector", "fps",
                 "--phase", "inference,select", "--repeats", "2", "--no-progress", "--out", str(out)])
    assert code == 0
    rows = {r.phase: r for r in read_results(out)}
    assert set(rows) == {"inference", "select"}
    for r in rows.values():
        assert r.status == "ok", r.error
        assert r.device == "cuda"
        assert 0 < r.peak_allocated_bytes <= r.peak_reserved_bytes
        assert r.nvml_peak_used_bytes is None or r.nvml_peak_used_bytes >= r.peak_reserved_bytes
        assert r.wall_time_s > 0 and len(r.wall_times_s) == 2 and r.repeats == 2
        assert r.flops > 0 and r.params_total > 0
        assert r.env["device_name"] == torch.cuda.get_device_name(0)
        assert r.env["device_memory_bytes"] == torch.cuda.get_device_properties(0).total_memory
        assert r.env["cuda"] == torch.version.cuda and r.env["driver"]
    assert rows["select"].params_trainable > 0 and rows["inference"].params_trainable == 0
    # the selection holds the model, the batch and its statistics: at least the floor's weights and input
    assert rows["select"].peak_allocated_bytes >= rows["inference"].peak_allocated_bytes * 0.5


@pytest.mark.parametrize("shape,dtype", [((64, 197, 768), torch.float32), ((16, 197, 3072), torch.float32),
                                         ((64, 197, 384), torch.bfloat16), ((1, 197, 768), torch.float32)])
def test_reduction_scratch_matches_the_model(shape, dtype):
    """The staging buffer of a reduction over the tokens, to the byte, as fps_profile.sim.reductions predicts."""
    from fps_profile.gpucheck.probes import OPS, _extra_bytes, card_target, predicted_scratch
    from fps_profile.selection.selectors.conv_stats import chunked_norm
    from fps_profile.sim.reductions import GpuShape

    dev = torch.device("cuda")
    target = card_target(GpuShape.of(dev))
    x = torch.randn(shape, device=dev).to(dtype)
    _fresh(dev)
    for name in ("norm1", "sum"):
        extra, out = _extra_bytes(OPS[name], x)
        assert extra - out == predicted_scratch(shape, dtype, OPS[name], target), name
    # the candidate for FPS takes no staging buffer: only its small partial results
    extra, out = _extra_bytes(lambda t: chunked_norm(t, 1), x)
    assert extra - out <= 4 * x.numel() // 512 * 2 + (1 << 20)
