"""The sim backend: fake-tensor peaks equal real CPU peaks, CUDA modelling, FLOPs, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from fps_profile.measure import phases
from fps_profile.errors import UserError
from fps_profile.run.isolation import run_isolated
from fps_profile.rows.cell import Cell
from fps_profile.measure.runner import measure
from fps_profile.measure.backends import check_device
from fps_profile.sim import Simulator, get_target
from fps_profile.sim.allocator import CachingAllocator
from fps_profile.trackers.cuda import round_size
from fps_profile.sim.attention import choose_kernel
from fps_profile.trackers.flops import FlopCount, time_floor
from fps_profile.trackers import LiveTensorBytes
from conftest import make_tiny_vit

MIB = 1 << 20
K1 = phases.BudgetSpec.parse("k=1")


def _phase_fn(phase: str, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, budget=K1):
    if phase == "inference":
        return phases.inference_fn(model, images)
    if phase == "train_step":
        return phases.train_step_fn(model, images, labels)
    if phase == "train_floor":
        return phases.train_floor_fn(model, images, labels)
    if phase == "train_sparse":  # values written into the weights in place, gathered gradients
        mask = phases.select_fn(model, [(images, labels)], "magnitude", budget)()
        return phases.train_step_fn(model, images, labels, mask=mask)
    return phases.select_fn(model, [(images, labels)], phase, budget)


def _real_cpu_peak(phase: str, batch: int, budget=K1) -> int:
    """LiveTensorBytes on real CPU tensors, counting exactly the tensors this run owns."""
    model = make_tiny_vit()
    images, labels = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    fn = _phase_fn(phase, model, images, labels, budget)
    if phase.startswith("train"):
        fn()  # optimizer state, as after the runner's warm-up
    owned = [*model.parameters(), *model.buffers(), images, labels]
    if phase in ("train_step", "train_sparse"):
        owned += [t for s in fn.optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    with LiveTensorBytes("cpu", include_existing=False) as live:
        for t in owned:
            live.track(t, check_budget=False)
        live.reset_peak()
        out = fn()
    del out
    return live.peak


def _sim_peak(phase: str, batch: int, device: str = "sim:cpu", budget=K1):
    real = make_tiny_vit()
    with Simulator(device) as sim:
        model = sim.module(real)
        images, labels = sim.batch(model, batch, torch.float32)
        fn = _phase_fn(phase, model, images, labels, budget)
        return sim.measure(fn, warmup=1 if phase.startswith("train") else 0)


@pytest.mark.parametrize("phase", ["inference", "fps", "gps", "snip", "magnitude", "train_step", "train_floor",
                                   "train_sparse"])
def test_sim_cpu_bytes_equal_real_cpu_bytes(phase):
    real = _real_cpu_peak(phase, 4)
    first, second = _sim_peak(phase, 4), _sim_peak(phase, 4)
    assert first.peak_bytes == real
    assert (second.peak_bytes, second.flops) == (first.peak_bytes, first.flops)


@pytest.mark.parametrize("phase", ["fps", "magnitude"])
def test_sim_cpu_bytes_equal_real_cpu_bytes_with_a_global_fraction(phase):
    # fake scores cannot say which tensor holds the kept entries; the total (and so the bytes) is exact
    budget = phases.BudgetSpec.parse("fraction=0.05")
    assert _sim_peak(phase, 4, budget=budget).peak_bytes == _real_cpu_peak(phase, 4, budget)


def test_cuda_target_adds_rounding_and_workspaces():
    cpu, h100, a100 = (_sim_peak("inference", 4, d) for d in ("sim:cpu", "sim:h100", "sim:a100"))
    assert h100.peak_bytes - a100.peak_bytes == get_target("sim:h100").cublas_workspace_bytes - \
        get_target("sim:a100").cublas_workspace_bytes
    extra = h100.peak_bytes - cpu.peak_bytes - get_target("sim:h100").cublas_workspace_bytes
    assert 0 < extra < 512 * 200  # 512-byte blocks for the tiny model's ~100 small tensors
    assert h100.flops == cpu.flops


def test_backward_phases_hold_two_workspaces():
    real = make_tiny_vit()
    with Simulator("sim:h100") as sim:
        model = sim.module(real)
        images, labels = sim.batch(model, 2, torch.float32)
        sim.measure(phases.inference_fn(model, images))
        assert set(sim.tracker.workspaces) == {"forward"}
        sim.measure(phases.select_fn(model, [(images, labels)], "gps", K1))
        assert set(sim.tracker.workspaces) == {"forward", "backward"}


def test_foreach_adamw_extra_copy_on_cuda_target():
    params = sum(p.numel() * 4 for p in make_tiny_vit().parameters())
    cpu, h100 = _sim_peak("train_step", 1, "sim:cpu"), _sim_peak("train_step", 1, "sim:h100")
    # params + grads + exp_avg + exp_avg_sq, and on CUDA one foreach sqrt(exp_avg_sq) of them all
    assert h100.peak_bytes - 2 * get_target("sim:h100").cublas_workspace_bytes >= 5 * params
    assert cpu.peak_bytes < 5 * params


# -- allocator model ---------------------------------------------------------------


def test_round_size():
    assert [round_size(n) for n in (0, 1, 512, 513, 4000)] == [0, 512, 512, 1024, 4096]


def test_small_blocks_split_and_merge():
    a = CachingAllocator()
    x, y = a.malloc(1000), a.malloc(100)
    assert (a.allocated, a.reserved) == (1024 + 512, 2 * MIB)
    a.free(x)
    a.free(y)
    assert a.allocated == 0 and a.peak_allocated == 1536
    z = a.malloc(2 * MIB - 4096)  # > 1 MiB: large pool, a new segment
    assert a.reserved == 2 * MIB + 20 * MIB and z.size == 2 * MIB - 4096
    a.empty_cache()
    assert a.reserved == 20 * MIB  # the free small segment went back; z's segment stays


def test_large_block_not_split_when_remainder_is_at_most_1mib():
    a = CachingAllocator()
    b = a.malloc(12 * MIB - 512 * 1024)  # segment 12 MiB, remainder 0.5 MiB stays in the block
    assert b.size == 12 * MIB and a.allocated == 12 * MIB
    a.free(b)
    c = a.malloc(11 * MIB)  # reuses the free 12 MiB block; remainder 1 MiB is not > 1 MiB
    assert c.size == 12 * MIB and a.reserved == 12 * MIB
    a.free(c)
    d = a.malloc(10 * MIB)  # remainder 2 MiB: split
    assert d.size == 10 * MIB and a.allocated == 10 * MIB


def test_freed_neighbours_merge_into_one_block():
    a = CachingAllocator()
    blocks = [a.malloc(4 * MIB) for _ in range(3)]  # one 20 MiB segment
    assert a.reserved == 20 * MIB
    for b in blocks:
        a.free(b)
    big = a.malloc(19 * MIB)
    assert a.reserved == 20 * MIB and big.size == 20 * MIB


# -- attention ------------------------------------------------------------------


def _qkv(dtype, head_dim=64):
    return [torch.empty(2, 4, 197, head_dim, dtype=dtype, device="meta") for _ in range(3)]


@pytest.mark.parametrize("dtype,head_dim,mask,capability,expect", [
    (torch.float32, 64, None, (9, 0), "efficient"),
    (torch.bfloat16, 64, None, (9, 0), "flash"),
    (torch.float16, 64, torch.empty(197, 197, device="meta"), (9, 0), "efficient"),
    (torch.float64, 64, None, (9, 0), "math"),
    (torch.float32, 62, None, (9, 0), "math"),
    (torch.bfloat16, 64, None, (7, 5), "efficient"),
])
def test_attention_kernel_choice(dtype, head_dim, mask, capability, expect):
    q, k, v = _qkv(dtype, head_dim)
    assert choose_kernel(q, k, v, mask, capability) == expect


def test_fused_attention_saves_no_attention_matrix():
    b, h, t, d = 8, 4, 256, 32
    attn_matrix = b * h * t * t * 4
    peaks = {}
    for device in ("sim:h100", "sim:cpu"):
        with Simulator(device) as sim:
            q, k, v = (torch.empty(b, h, t, d, requires_grad=True) for _ in range(3))
            peaks[device] = sim.measure(
                lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v).sum().backward()).peak_bytes
    assert peaks["sim:h100"] < attn_matrix
    with Simulator("sim:h100") as sim:
        q, k, v = (torch.empty(b, h, t, d, dtype=torch.float64, requires_grad=True) for _ in range(3))
        math_peak = sim.measure(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v).sum()).peak_bytes
    assert math_peak > 2 * attn_matrix  # float64 falls back to math: scores and softmax materialised


def test_layer_norm_input_gradient_is_contiguous_as_on_a_device():
    # PVT-v2 pattern: a LayerNorm whose output is transposed, so its output gradient is not
    # contiguous. CPU and CUDA kernels return the input gradient contiguous (a later reshape is a
    # view); the fake kernel gave it the output gradient's strides (the reshape then copied).
    def grad_strides():
        norm = nn.LayerNorm(16)
        x = torch.empty(2, 32, 16).fill_(1.0).requires_grad_()
        w = torch.empty(2, 16, 32).fill_(2.0)
        seen = []
        x.register_hook(lambda g: seen.append((g.stride(), g.is_contiguous())))
        (norm(x).transpose(1, 2) * w).sum().backward()  # output gradient: w transposed
        return seen

    real = grad_strides()
    assert real == [((512, 16, 1), True)]
    for device in ("sim:cpu", "sim:h100"):
        with Simulator(device) as sim:
            assert grad_strides() == real, device
        assert sim.tracker.peak > 0


def test_cuda_autocast_policy_keeps_softmax_in_float32():
    with Simulator("sim:h100") as sim, torch.autocast("cpu", dtype=torch.bfloat16):
        x = torch.empty(4, 8)
        w = torch.empty(8, 8)
        y = x @ w
        assert y.dtype == torch.bfloat16
        assert torch.softmax(y, -1).dtype == torch.float32  # CUDA autocast: fp32; CPU's would be bf16
        assert torch.nn.functional.gelu(y).dtype == torch.bfloat16
        assert sim.target.is_cuda


# -- FLOPs --------------------------------------------------------------------------


def test_flops_of_a_linear_layer():
    real = nn.Linear(64, 32)
    with Simulator("sim:h100") as sim:
        lin = sim.module(real)
        x = torch.empty(8, 64, requires_grad=True)
        fwd = sim.measure(lambda: lin(x))
        both = sim.measure(lambda: lin(x).sum().backward())
    assert fwd.flops == 2 * 8 * 64 * 32 == 32768
    assert both.flops == 3 * fwd.flops  # backward: input and weight gradients


def test_flops_of_one_vit_block():
    from timm.models.vision_transformer import Block

    b, n, d, heads = 4, 197, 64, 4
    real = Block(d, heads, mlp_ratio=4.0)
    with Simulator("sim:h100") as sim:
        block = sim.module(real)
        x = torch.empty(b, n, d)
        stats = sim.measure(lambda: block(x))
    # qkv 3d^2, proj d^2, fc1 4d^2, fc2 4d^2 (2 FLOPs per multiply-add); q@k^T and attn@v n^2 d each
    assert stats.flops == 2 * b * n * d * d * (3 + 1 + 4 + 4) + 2 * 2 * b * n * n * d
    assert dict(stats.flop_counts)[("attention", "float32")] == 4 * b * n * n * d


def test_flop_count_matches_flop_counter_mode():
    from torch.utils.flop_counter import FlopCounterMode

    real = make_tiny_vit()
    with Simulator("sim:h100") as sim:
        model = sim.module(real)
        x = torch.empty(2, 3, 32, 32)
        theirs = FlopCounterMode(display=False)

        def run():
            with theirs:
                model(x).sum().backward()

        ours = sim.measure(run)
    assert ours.flops == theirs.get_total_flops() > 0


def test_real_cpu_flops_include_cpu_attention():
    model, x = make_tiny_vit(), torch.randn(2, 3, 32, 32)
    with FlopCount() as real:
        model(x)
    assert real.counts[("attention", "float32")] > 0
    assert real.total == _sim_peak("inference", 2).flops


def test_time_floor_uses_the_rate_of_each_kind_and_dtype():
    rates = get_target("sim:h100").peak_flops
    counts = {("matmul", "float32"): rates["float32"], ("conv", "float32"): rates["tf32"],
              ("matmul", "bfloat16"): 2 * rates["bfloat16"]}
    assert time_floor(counts, rates) == pytest.approx(4.0)
    assert time_floor(counts, {}) is None


# -- rows, budgets, errors ---------------------------------------------------------------


def test_sim_row_has_peak_flops_and_floor_but_no_time():
    row = measure(Cell(model="test_vit", batch_size=2, phase="inference", device="sim:h200"))
    assert row.status == "ok", row.error
    assert row.device == "sim:h200" and row.wall_time_s is None and row.wall_times_s == []
    assert row.peak_allocated_bytes > row.params_total * 4
    rates = get_target("sim:h200").peak_flops
    assert row.flops / rates["tf32"] < row.time_floor_s < row.flops / rates["float32"]
    assert row.env["sim"]["target"] == "h200"


def test_memory_budget_gives_oom_and_max_batch_search_works():
    from fps_profile.run.maxbatch import find_max_batch

    budget = 36 * MIB

    def probe(batch):
        return measure(Cell(model="test_vit", batch_size=batch, phase="inference", device="sim",
                            memory_budget=budget))

    res = find_max_batch(probe, budget, start=1, cap=1 << 14)
    assert res.error is None and res.max_batch and res.first_oom == res.max_batch + 1
    assert res.peak_bytes <= budget
    over = probe(res.first_oom)
    assert over.status == "oom" and "predicted out of memory on sim:h100" in over.error


def test_check_sim_device():
    check_device("sim")
    check_device("sim:a100")
    with pytest.raises(UserError, match="did you mean 'h200'"):
        check_device("sim:h20")
    assert get_target("sim").name == "h100"


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 4)

    def forward(self, x):
        y = self.lin(x.mean((2, 3)))
        return y if y.sum() > 0 else -y  # branches on a value: impossible without data


def test_model_needing_values_fails_with_one_line_error():
    real = DataDependent()
    with Simulator("sim", what="DataDependent") as sim:
        model = sim.module(real)
        x = torch.empty(2, 3, 8, 8)
        with pytest.raises(UserError) as info:
            sim.measure(lambda: model(x))
    msg = str(info.value)
    assert "\n" not in msg and "DataDependent" in msg and "aten._local_scalar_dense" in msg
    assert "real device" in msg


def test_model_needing_values_gives_an_error_row():
    import timm
    from timm.models import register_model

    name = "fps_sim_test_datadep"
    if not timm.is_model(name):
        def fps_sim_test_datadep(pretrained=False, **kwargs):
            return DataDependent()

        register_model(fps_sim_test_datadep)
    row = measure(Cell(model=name, batch_size=2, phase="inference", device="sim"))
    assert row.status == "error"
    assert name in row.error and "aten._local_scalar_dense" in row.error and "\n" not in row.error


# -- end to end (worker processes, real timm names) ---------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("phase,selector", [("inference", None), ("select", "gps"), ("train_step", "fps")])
def test_end_to_end_sim_cpu_equals_cpu_backend(phase, selector):
    cell = dict(model="test_vit", batch_size=3, phase=phase, selector=selector, repeats=1)
    cpu = run_isolated(Cell(device="cpu", **cell))
    sims = [run_isolated(Cell(device="sim:cpu", **cell)) for _ in range(2)]
    assert cpu.status == "ok" and all(s.status == "ok" for s in sims)
    assert sims[0].peak_allocated_bytes == sims[1].peak_allocated_bytes == cpu.peak_allocated_bytes
    assert sims[0].flops == sims[1].flops == cpu.flops > 0
    assert sims[0].params_trainable == cpu.params_trainable


@pytest.mark.slow
def test_cli_sweep_and_max_batch_on_sim(tmp_path):
    out = tmp_path / "sim.jsonl"
    base = [sys.executable, "-m", "fps_profile", "sweep", "--device", "sim:h100", "--model", "test_vit",
            "--selector", "fps", "--out", str(out), "--no-progress"]
    done = subprocess.run(base + ["--batch-size", "2", "--phase", "inference,select"], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["device"] for r in rows} == {"sim:h100"} and all(r["status"] == "ok" for r in rows)
    assert all(r["wall_time_s"] is None and r["flops"] > 0 for r in rows)
    done = subprocess.run(base + ["--batch-size", "1", "--phase", "inference", "--max-batch",
                                  "--memory-budget", "64MiB"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "oom at" in done.stdout


def test_compare_predicted_with_measured(tmp_path, capsys):
    from fps_profile.rows.result import Result
    from plotrows import write_results
    from fps_profile.analysis.compare import main

    def row(device, peak, batch=8, selector="fps"):
        return Result(selector=selector, model="m", batch_size=batch, dtype="float32", device=device,
                      phase="select", budget="k=1", scope="gps", peak_allocated_bytes=peak)

    write_results(tmp_path / "cuda.jsonl", [row("cuda", 1000), row("cuda", 4000, selector="gps"),
                                            row("cuda", 10, batch=1)])
    write_results(tmp_path / "sim.jsonl", [row("sim:h100", 1030), row("sim:h100", 3800, selector="gps")])
    assert main([str(tmp_path / "cuda.jsonl"), str(tmp_path / "sim.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "+3.0%" in out and "-5.0%" in out
    assert "2 cells: median |error| 4.0%, worst 5.0%" in out
    write_results(tmp_path / "none.jsonl", [row("sim:h100", 5, batch=2)])
    assert main([str(tmp_path / "cuda.jsonl"), str(tmp_path / "none.jsonl")]) == 2
