"""Language models (``hf:``): shipped configs, token batches, the seq_len axis, sim == cpu bytes,
FPS/Wanda statistics over every token, grouped-query attention in the sim."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("transformers")

from fps_profile.errors import UserError  # noqa: E402
from fps_profile.models.hf import DEFAULT_SEQ_LEN, build_lm, shipped, token_batches  # noqa: E402
from fps_profile.models import check_model_name, create_model, synthetic_batches  # noqa: E402
from fps_profile.rows.result import Result  # noqa: E402
from fps_profile.rows.cell import Cell  # noqa: E402
from fps_profile.measure.runner import measure
from fps_profile.run.grid import Grid  # noqa: E402
from numerics import sum_rtol  # noqa: E402

LLAMA, GPT2 = "hf:llama-tiny", "hf:gpt2-tiny"


# -- models ---------------------------------------------------------------------------------

# Parameter counts published with each model (model cards / safetensors metadata).
@pytest.mark.parametrize("name,params", [
    ("llama-3.2-1b", 1_235_814_400), ("llama-3.1-8b", 8_030_261_248), ("llama-3.1-70b", 70_553_706_496),
    ("qwen2.5-7b", 7_615_616_512), ("mistral-7b", 7_248_023_552), ("gpt2", 124_439_808),
])
def test_shipped_configs_have_the_published_sizes(name, params):
    with torch.device("meta"):
        model = build_lm(f"hf:{name}", torch.bfloat16)
    assert sum(p.numel() for p in model.parameters()) == params
    assert model.config._attn_implementation == "sdpa" and model.config.use_cache is False
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_names_errors_and_local_config(tmp_path, monkeypatch):
    assert {"llama-3.2-1b", "llama-3.1-8b", "llama-3.1-70b", "qwen2.5-7b", "mistral-7b", "gpt2",
            "llama-tiny", "gpt2-tiny"} <= set(shipped())
    with pytest.raises(UserError, match="did you mean 'llama-3.2-1b'"):
        check_model_name("hf:llama-3.2-1")
    with pytest.raises(UserError, match="does not exist"):
        check_model_name("hf:nowhere/config.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"hidden_size": 8}')
    with pytest.raises(UserError, match="no 'model_type'"):
        check_model_name(f"hf:{bad}")
    good = tmp_path / "config.json"
    good.write_text(json.dumps({"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
                                "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 50}))
    model = create_model(f"hf:{good}")
    assert sum(p.numel() for p in model.parameters()) == 50 * 32 * 2 + 4 * 32 * 32 + 3 * 32 * 64 + 3 * 32
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    with pytest.raises(UserError, match=r"pip install 'fps-profile\[llm\]'"):
        check_model_name(LLAMA)


def test_token_batches():
    model = create_model(LLAMA)
    (ids, labels), = token_batches(model, 3, 20)
    assert ids.shape == (3, 20) and ids.dtype == torch.int64 and labels is ids
    assert 0 <= int(ids.min()) and int(ids.max()) < model.config.vocab_size
    assert torch.equal(synthetic_batches(model, 3, seq_len=20)[0][0], ids)  # seeded
    assert synthetic_batches(model, 1)[0][0].shape == (1, DEFAULT_SEQ_LEN)
    with pytest.raises(UserError, match="longer than"):
        token_batches(create_model(GPT2), 1, 1025)  # GPT-2 has 1024 positions
    with pytest.raises(UserError, match="image models"):
        synthetic_batches(nn.Sequential(nn.Linear(2, 2)), 1, seq_len=8)


# -- cells, keys, grids ----------------------------------------------------------------------

def test_seq_len_is_part_of_the_key_only_when_set():
    base = ("fps", "m", 2, "float32", "cpu", "select", "k=1", "gps")
    cell = dict(model="m", batch_size=2, selector="fps")
    assert Cell(**cell).key() == base
    assert Cell(**cell, seq_len=512).key() == base + (("seq_len", 512),) != Cell(**cell, seq_len=1024).key()
    assert Cell(**cell, image_size=512).key() == base + (512,) != Cell(**cell, seq_len=512).key()
    row = Cell(model=LLAMA, batch_size=2, selector="fps", seq_len=64).empty_row()
    assert row.seq_len == 64 and row.key() == Cell(model=LLAMA, batch_size=2, selector="fps", seq_len=64).key()
    assert Result.from_dict(json.loads(row.to_json())).key() == row.key()
    assert "seq=64" in Cell(model=LLAMA, batch_size=2, seq_len=64).label()


def test_grid_seq_len_axis_and_errors():
    grid = Grid(selectors=["fps"], models=[LLAMA], batch_sizes=[1, 2], seq_lens=[64, 16], phases=["select"])
    grid.validate()
    assert [(c.seq_len, c.batch_size) for c in grid.cells()] == [(16, 1), (16, 2), (64, 1), (64, 2)]
    assert {c.seq_len for c in Grid(models=[LLAMA], phases=["inference"]).cells()} == {DEFAULT_SEQ_LEN}
    assert {c.seq_len for c in Grid(phases=["inference"]).cells()} == {None}  # image models
    with pytest.raises(UserError, match="--seq-len applies to language models"):
        Grid(models=[LLAMA, "vit_tiny_patch16_224"], seq_lens=[64]).validate()
    with pytest.raises(UserError, match="integer >= 1"):
        Grid(models=[LLAMA], seq_lens=[0]).validate()


# -- sim bytes == cpu bytes ------------------------------------------------------------------

_PHASES = [("inference", None), ("select", "fps"), ("select", "wanda"), ("select", "gps"), ("select", "magnitude"),
           ("select", "random"), ("train_step", None), ("train_step", "fps"), ("train_floor", None)]


def _cases():
    for model in (LLAMA, GPT2):
        for phase, selector in _PHASES:
            yield pytest.param(model, phase, selector, id=f"{model[3:]}-{phase}-{selector}")


@pytest.mark.parametrize("model,phase,selector", list(_cases()))
def test_sim_cpu_bytes_equal_cpu_bytes(model, phase, selector):
    from fps_profile.run.isolation import run_isolated

    # Each in a fresh process, as sweeps measure: in this one, tensors earlier tests or imported libraries
    # keep alive would count on the cpu (its tracker counts every live tensor, as the CUDA allocator does).
    cell = dict(model=model, batch_size=2, seq_len=24, phase=phase, selector=selector, repeats=1)
    cpu, sim = (run_isolated(Cell(device=d, **cell)) for d in ("cpu", "sim:cpu"))
    assert cpu.status == sim.status == "ok", (cpu.error, sim.error)
    assert sim.peak_allocated_bytes == cpu.peak_allocated_bytes > 0
    assert sim.params_total == cpu.params_total and sim.params_trainable == cpu.params_trainable
    assert sim.peak_breakdown_bytes == cpu.peak_breakdown_bytes


# -- FPS / Wanda statistics over every token ------------------------------------------------

def _reference_input_stats(model: nn.Module, batches) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per nn.Linear: (mean |x|, ||x||_2) per input feature over every token of every sequence,
    from forward hooks (not the selectors' function mode)."""
    rows: dict[str, list[torch.Tensor]] = {}
    hooks = [m.register_forward_hook(lambda mod, args, out, name=name: rows.setdefault(name, []).append(
        args[0].detach().reshape(-1, args[0].shape[-1]).double()))
        for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    model.eval()
    with torch.no_grad():
        for ids, _ in batches:
            model(input_ids=ids)
    for h in hooks:
        h.remove()
    out = {}
    for name, xs in rows.items():
        x = torch.cat(xs)
        out[f"{name}.weight"] = (x.abs().mean(0), x.pow(2).sum(0).sqrt())
    return out


@pytest.mark.parametrize("selector,which", [("fps", 0), ("wanda", 1)])
def test_fps_and_wanda_statistics_on_tiny_llama(selector, which):
    from fps_profile.selection.scope import Role, assign_roles
    from fps_profile.selection.selectors import Target, create

    torch.manual_seed(0)
    model = create_model(LLAMA)
    batches = token_batches(model, 2, 12, num_batches=2)
    ref = _reference_input_stats(model, batches)
    params = dict(model.named_parameters())
    targets = [Target(n, params[n], m, a) for n, (r, m, a) in assign_roles(model, "gps").items()
               if r is Role.RANKED and isinstance(m, nn.Linear)]
    assert {t.name.split(".")[-2] for t in targets} >= {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                        "up_proj", "down_proj"}
    sel = create(selector)
    sel.prepare(model, batches, targets)
    # float32 sums of every token's same-sign terms (2 batches x 2 x 12), then a division or root and |w|;
    # the reference sums the same float32 inputs in float64.
    tol = sum_rtol(2 * 2 * 12, torch.float32, extra_ops=3)
    for t in targets:
        expected = params[t.name].detach().double().abs() * ref[t.name][which]
        torch.testing.assert_close(sel.score(t).double(), expected, rtol=tol, atol=0)
    sel.release()
    first = targets[0].name  # the statistic is over all tokens: the first sequence's alone differs
    assert not torch.allclose(_reference_input_stats(model, [(batches[0][0][:1], None)])[first][which],
                              ref[first][which])


# -- grouped-query attention in the sim -------------------------------------------------------

def test_gqa_takes_flash_on_the_sim_with_the_flash_bytes():
    from fps_profile.sim import Simulator
    from fps_profile.trackers.cuda import round_size
    from fps_profile.sim.attention import choose_kernel

    b, hq, hkv, t, d = 2, 8, 2, 256, 64
    q = torch.empty(b, hq, t, d, dtype=torch.bfloat16, device="meta")
    k = v = torch.empty(b, hkv, t, d, dtype=torch.bfloat16, device="meta")
    assert choose_kernel(q, k, v, None, (9, 0), enable_gqa=True) == "flash"
    assert choose_kernel(q, k, v, None, (9, 0), enable_gqa=False) == "math"
    assert choose_kernel(q, k, v, None, (7, 5), enable_gqa=True) == "math"  # efficient needs equal heads
    with Simulator("sim:h100") as sim:
        q, k, v = (torch.empty(b, h, t, d, dtype=torch.bfloat16, requires_grad=True) for h in (hq, hkv, hkv))
        stats = sim.measure(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
        weights = sum(round_size(x.numel() * 2) for x in (q, k, v))
    # output and float32 log-sum-exp, no [t, t] matrix, no expanded key/value heads; plus the two
    # int64 RNG scalars (seed, offset) the fake kernel puts beside them (CUDA's stay on the host)
    flash = round_size(b * hq * t * d * 2) + round_size(b * hq * t * 4)
    assert stats.peak_bytes - weights - flash == 2 * round_size(8)


def test_llama_on_sim_h100_runs_flash_attention_without_a_mask(monkeypatch):
    from fps_profile.sim import attention

    seen = []
    choose = attention.choose_kernel

    def spy(q, k, v, mask, *args, **kwargs):
        seen.append((choose(q, k, v, mask, *args, **kwargs), mask))
        return seen[-1][0]

    monkeypatch.setattr(attention, "choose_kernel", spy)
    row = measure(Cell(model=LLAMA, batch_size=1, seq_len=64, phase="train_floor", device="sim:h100",
                       dtype="bfloat16"))
    assert row.status == "ok", row.error
    assert seen and all(kernel == "flash" and mask is None for kernel, mask in seen)


# -- CLI ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_cli_sweep_seq_len_and_max_batch_on_sim(tmp_path):
    out = tmp_path / "lm.jsonl"
    base = [sys.executable, "-m", "fps_profile", "sweep", "--device", "sim:h100", "--model", LLAMA,
            "--dtype", "bfloat16", "--out", str(out), "--no-progress"]
    done = subprocess.run(base + ["--selector", "fps", "--batch-size", "1", "--seq-len", "32,64",
                                  "--phase", "inference,select"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((r["seq_len"], r["phase"]) for r in rows) == [(32, "inference"), (32, "select"),
                                                                 (64, "inference"), (64, "select")]
    assert all(r["status"] == "ok" for r in rows)
    done = subprocess.run(base + ["--selector", "fps", "--batch-size", "1", "--seq-len", "64", "--phase",
                                  "select", "--max-batch", "--memory-budget", "4MiB"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "seq=64" in done.stdout and "oom at" in done.stdout
    done = subprocess.run(base[:-3] + ["--seq-len", "64", "--model", "vit_tiny_patch16_224"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "--seq-len applies to language models" in done.stderr
