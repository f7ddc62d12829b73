"""Memory and time trackers against allocations of known size."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from fps_profile.trackers import CudaAllocatorPeak, LiveTensorBytes, time_repeats


def test_live_bytes_exact_for_known_allocations():
    with LiveTensorBytes("cpu") as live:
        base = live.current
        a = torch.empty(1000, dtype=torch.float32)  # 4000 bytes
        b = torch.zeros(10, 10, dtype=torch.float64)  # 800 bytes
        assert live.current - base == 4800
        del a
        assert live.current - base == 800
        c = torch.empty(3, dtype=torch.int8)  # 3 bytes
        assert live.current - base == 803
        del b, c
        assert live.current == base
        assert live.peak - base == 4800


def test_views_and_inplace_ops_are_not_new_bytes():
    with LiveTensorBytes("cpu") as live:
        base = live.current
        a = torch.ones(256)
        v = a[10:].view(-1)
        a.mul_(2)
        t = a.view(16, 16).t()
        assert live.current - base == 1024
        del a, v, t
        assert live.current == base


def test_existing_tensors_are_in_the_baseline():
    keep = torch.empty(12345, dtype=torch.uint8)
    with LiveTensorBytes("cpu") as live:
        assert live.baseline >= keep.numel()
        before = live.current
        del keep  # freeing a tensor that predates the region lowers the count
        assert before - live.current == 12345


def test_resize_is_counted():
    with LiveTensorBytes("cpu") as live:
        base = live.current
        out = torch.empty(0)
        torch.add(torch.ones(100), 1, out=out)  # out= resizes 0 -> 400 bytes (+400 for ones, freed)
        assert live.current - base == 400
        out.resize_(1000)
        assert live.current - base == 4000


def test_backward_allocations_are_seen():
    lin = torch.nn.Linear(100, 50)
    x = torch.randn(8, 100)
    with LiveTensorBytes("cpu") as live:
        base = live.current
        lin(x).sum().backward()
        grads = lin.weight.grad.nbytes + lin.bias.grad.nbytes
        assert live.current - base == grads  # only the gradients outlive backward
        assert live.peak - base >= grads


def test_fused_l1_reduction_allocates_no_activation_copy():
    h = torch.randn(8, 197, 192)
    with LiveTensorBytes("cpu") as live:
        base = live.current
        torch.linalg.vector_norm(h, ord=1, dim=(0, 1))
        fused = live.peak - base
        live.reset_peak()
        h.abs().sum((0, 1))
        naive = live.peak - live.current
    assert fused == 192 * 4
    assert naive >= h.nbytes


def test_budget_raises_out_of_memory():
    with pytest.raises(torch.OutOfMemoryError):
        with LiveTensorBytes("cpu", budget_bytes=10_000, include_existing=False):
            torch.empty(20_000, dtype=torch.uint8)


def test_rss_peak_sees_a_large_touched_buffer():
    # In a fresh process: in a long test session freed memory kept by the allocator can
    # be reused without raising the resident set, which would make the check meaningless.
    script = textwrap.dedent("""
        import torch
        from fps_profile.trackers import RssPeak
        with RssPeak() as rss:
            buf = torch.ones(64 * 2**20, dtype=torch.uint8)  # 64 MiB, touched
            del buf
        with RssPeak() as idle:
            pass
        print(rss.reset_ok, rss.peak, idle.peak)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    reset_ok, peak, idle = out.split()
    assert int(peak) > 0 and int(idle) > 0
    if reset_ok == "True":
        assert int(peak) - int(idle) > 32 * 2**20


def test_time_repeats_counts_and_warmup():
    calls = []
    times = time_repeats(lambda: calls.append(1), torch.device("cpu"), warmup=2, repeats=5)
    assert len(times) == 5 and len(calls) == 7
    assert all(t >= 0 for t in times)


@pytest.mark.cuda
def test_cuda_allocator_peak_within_one_percent():
    dev = torch.device("cuda")
    with CudaAllocatorPeak(dev) as peak:
        a = torch.empty(64 * 2**20, dtype=torch.uint8, device=dev)
        del a
    expected = 64 * 2**20
    assert abs(peak.peak_allocated - peak.baseline - expected) <= 0.01 * expected
