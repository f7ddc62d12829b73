"""The ``shira:R`` budget as a cell value and the ``trainer`` axis (fps-profile, peft-shira): parsing,
keys, labels, grids, the CLI's flags, the sim's exact counts, and the PEFT step measured on the cpu
and predicted by the sim."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import needs_peft
from torch import nn

import fps_profile
from conftest import make_tiny_vit
from fps_profile.errors import UserError
from fps_profile.measure.phases import BudgetSpec
from fps_profile.rows.cell import Cell
from fps_profile.rows.label import describe, series
from fps_profile.rows.result import Result
from fps_profile.rows.schema import axis
from fps_profile.rows.values import parse_budget, parse_trainer
from fps_profile.run.grid import Grid

pytestmark = [pytest.mark.filterwarnings("ignore:Sparse invariant checks:UserWarning"),
              pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")]

STEP = dict(selector="fps", model="test_vit", batch_size=2, phase="train_step", budget="shira:2", scope="shira")




# -- the shira:R budget in rows -----------------------------------------------------------------

@pytest.mark.parametrize("text, canonical", [("shira:8", "shira:8"), (" shira: 2 ", "shira:2"), ("k=3", "k=3"),
                                             ("fraction=0.01", "fraction=0.01")])
def test_budget_axis_reads_shira_beside_k_and_fraction(text, canonical):
    assert parse_budget(text) == canonical
    spec = BudgetSpec.parse(canonical)
    assert str(spec) == canonical
    kwargs = spec.select_kwargs()
    assert sum(v is not None for v in kwargs.values()) == 1  # exactly one of k, fraction, budget reaches select
    assert (kwargs["budget"] == canonical) == canonical.startswith("shira")


@pytest.mark.parametrize("text", ["shira:0", "shira:x", "shira", "shira:-1", "rank:2", "shira:2.5"])
def test_bad_shira_budgets_are_one_line_errors(text):
    for parse in (parse_budget, BudgetSpec.parse):
        with pytest.raises(UserError) as info:
            parse(text)
        assert "shira:8" in str(info.value) and "\n" not in str(info.value)


def test_sim_counts_of_a_shira_budget_are_the_selections_own():
    from fps_profile.sim.masks import synthetic_mask, trainable_counts

    model = make_tiny_vit()
    counts = trainable_counts(model, BudgetSpec.parse("shira:2"), "shira")
    mask = fps_profile.select(model, None, "magnitude", budget="shira:2", scope="shira")
    params = dict(model.named_parameters())
    linear = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "head"}
    for name, p in params.items():
        # by hand: 2 * (out + in) entries of every ranked Linear weight, the head whole, the rest frozen
        expected = 2 * sum(p.shape) if name in linear else p.numel() if name.startswith("head.") else 0
        assert counts[name] == mask.count(name) == expected, name
    synthetic = synthetic_mask(model, BudgetSpec.parse("shira:2"), "shira")
    assert {n: synthetic.count(n) for n in params} == counts


def test_a_shira_budget_larger_than_a_tensor_fails_in_the_sim_as_in_select():
    from fps_profile.sim.masks import trainable_counts

    model = make_tiny_vit()  # width 32: the 32x32 attn.proj holds at most r = 32*32 // 64 = 16
    for count in (lambda: trainable_counts(model, BudgetSpec.parse("shira:17"), "shira"),
                  lambda: fps_profile.select(model, None, "magnitude", budget="shira:17", scope="shira")):
        with pytest.raises(UserError, match=r"use r <= 16"):
            count()
    assert trainable_counts(model, BudgetSpec.parse("shira:16"), "shira")["blocks.0.attn.proj.weight"] == 32 * 32


# -- the trainer axis ---------------------------------------------------------------------------

def test_trainer_joins_the_key_and_label_only_where_it_trains_a_mask():
    plain, peft = Cell(**STEP), Cell(**STEP, trainer="peft-shira")
    assert plain.key() == Cell(**STEP, trainer="fps-profile").key()
    assert peft.key() == plain.key() + (("trainer", "peft-shira"),)
    assert series(peft) == "train:fps via peft-shira" and series(plain) == "train:fps"
    assert "via peft-shira" in describe(peft)
    # select rows, the inference floor and full fine-tuning have no trainer: one cell whatever it says
    for other in (dict(phase="select"), dict(selector=None), dict(phase="inference", selector=None)):
        a, b = Cell(**{**STEP, **other}), Cell(**{**STEP, **other, "trainer": "peft-shira"})
        assert a.key() == b.key() and b.trainer == axis("trainer").default and "via" not in describe(b)


def test_rows_written_before_the_trainer_axis_keep_their_keys():
    old = dict(selector="fps", model="m", batch_size=2, dtype="float32", device="cpu", phase="train_step",
               budget="k=1", scope="gps")  # no trainer field: a row from before the axis
    row = Result.from_dict(old)
    assert row.trainer is None
    assert row.key() == ("fps", "m", 2, "float32", "cpu", "train_step", "k=1", "gps")
    assert Cell(**{k: v for k, v in old.items()}).empty_row().key() == row.key()
    peft_row = Cell(**old, trainer="peft-shira").empty_row()
    assert peft_row.trainer == "peft-shira" and peft_row.key() == row.key() + (("trainer", "peft-shira"),)
    assert Result.from_dict(json.loads(peft_row.to_json())).key() == peft_row.key()


def test_bad_trainer_is_a_one_line_error_with_a_suggestion():
    assert parse_trainer(" PEFT-SHIRA ") == "peft-shira"
    with pytest.raises(UserError, match="peft-shira") as info:
        parse_trainer("peft_shira")
    assert "\n" not in str(info.value)


def test_a_grid_crosses_trainers_with_the_sparse_steps_only():
    grid = Grid(selectors=["fps"], models=["test_vit"], batch_sizes=[2], devices=["sim:cpu"],
                phases=["select", "train_step"], budget=["shira:2"], scope="shira",
                trainers=["fps-profile", "peft-shira"])
    grid.validate()
    labels = sorted(c.label() for c in grid.cells())
    assert labels == sorted([
        "test_vit b=2 float32 sim:cpu fps shira:2 scope=shira",
        "test_vit b=2 float32 sim:cpu train:full",
        "test_vit b=2 float32 sim:cpu train:fps shira:2 scope=shira",
        "test_vit b=2 float32 sim:cpu train:fps via peft-shira shira:2 scope=shira"])


def test_sweep_flags_set_shira_budgets_and_trainers(tmp_path):
    from fps_profile.cli import build_parser
    from fps_profile.cli.sweep_cmd import build_grid

    args = build_parser().parse_args(["sweep", "--selector", "fps", "--k", "1", "--shira", "2,8", "--trainer",
                                      "fps-profile,peft-shira", "--scope", "shira"])
    grid = build_grid(args)
    assert grid.budget == ["k=1", "shira:2", "shira:8"] and grid.trainers == ["fps-profile", "peft-shira"]
    config = tmp_path / "grid.toml"
    config.write_text('budget = ["shira:4"]\ntrainers = "peft-shira"\n')
    grid = build_grid(build_parser().parse_args(["sweep", "--config", str(config)]))
    assert grid.budget == ["shira:4"] and grid.trainers == ["peft-shira"]
    with pytest.raises(UserError, match="trainer"):
        build_grid(build_parser().parse_args(["sweep", "--trainer", "lora"]))


# -- measured and predicted ---------------------------------------------------------------------

def _peft_import_bytes() -> int:
    """Bytes of the CPU tensors that importing peft creates in a process (module-level constants),
    which the cpu tracker counts (it counts every live CPU tensor) and a GPU or the sim does not hold."""
    code = ("import gc, torch\n"
            "def live(): return {id(t): t for t in gc.get_objects() if issubclass(type(t), torch.Tensor)}\n"
            "import fps_profile.integrations.peft_step\n"
            "before = live()\n"
            "import peft, peft.tuners.shira\n"
            "print(sum(t.untyped_storage().nbytes() for i, t in live().items() if i not in before))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@needs_peft
@pytest.mark.slow
def test_sim_predicts_the_peft_step_measured_on_the_cpu():
    from fps_profile.run.isolation import run_isolated

    rows = {(d, t): run_isolated(Cell(**STEP, device=d, trainer=t, repeats=1))
            for d in ("cpu", "sim:cpu") for t in ("fps-profile", "peft-shira")}
    for r in rows.values():
        assert r.status == "ok", r.error
    cpu, sim = rows["cpu", "peft-shira"], rows["sim:cpu", "peft-shira"]
    # The same trainable entries (the mask) through both trainers, on both backends.
    assert len({r.params_trainable for r in rows.values()}) == 1
    assert rows["cpu", "fps-profile"].peak_allocated_bytes == rows["sim:cpu", "fps-profile"].peak_allocated_bytes
    # Exact but for peft's own module-level CPU tensors, which only the cpu tracker sees.
    assert cpu.peak_allocated_bytes - sim.peak_allocated_bytes == _peft_import_bytes()
    assert cpu.flops == sim.flops > 0
    # Why PEFT's step needs more, to the byte (both peak in the backward, with everything the forward
    # saved): SHiRA's forward builds weight.clone() + sparse(delta) in every adapted layer and autograd
    # keeps that dense copy wherever the layer's input needs a gradient (every adapted Linear but block
    # 0's qkv, whose input comes from frozen layers only); every layer keeps its sparse delta (int64
    # (row, col) indices and float32 values: 20 B per entry) for the add's backward; SHiRA holds int32
    # (row, col) indices (8 B per entry) where fps-profile's step holds int32 flat positions (4 B);
    # modules_to_save keeps the original head beside its trained copy.
    from fps_profile.models import create_model

    model = create_model("test_vit")
    adapted = [m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "head"]
    copies = sum(m.weight.numel() * 4 for m in adapted if m is not model.blocks[0].attn.qkv)
    head = sum(p.numel() * 4 for p in model.head.parameters())
    entries = sum(2 * (m.in_features + m.out_features) for m in adapted)  # shira:2
    extra = sim.peak_allocated_bytes - rows["sim:cpu", "fps-profile"].peak_allocated_bytes
    assert extra == copies + head + (20 + 8 - 4) * entries
    assert cpu.peak_phase == sim.peak_phase == rows["cpu", "fps-profile"].peak_phase == "backward"


def test_readme_peft_table_is_the_committed_rows_of_its_commands():
    import re
    import shlex
    from pathlib import Path

    from fps_profile.cli import build_parser
    from fps_profile.cli.sweep_cmd import build_grid
    from fps_profile.rows.label import model_label
    from fps_profile.rows.store import read_results
    from fps_profile.units import fmt_bytes

    root = Path(__file__).resolve().parent.parent
    text = (root / "README.md").read_text()
    section = text[text.index("### The same mask through Hugging Face PEFT"):]
    section = section[:section.index("\n## ")]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("\\\n", " ")
    keys, outs = set(), set()
    for line in filter(str.strip, block.splitlines()):
        argv = shlex.split(line.split("#")[0])
        assert argv[:2] == ["fps-profile", "sweep"]
        args = build_parser().parse_args(argv[1:])
        keys |= {c.key() for c in build_grid(args).cells()}
        outs.add(args.out)
    (out,) = outs
    rows = read_results(root / out)
    assert sorted(map(repr, (r.key() for r in rows))) == sorted(map(repr, keys))  # the commands' cells, each once
    assert all(r.status == "ok" for r in rows)
    cells: dict[tuple, dict] = {}
    for r in rows:
        col = "floor" if r.phase == "train_floor" else "full" if r.selector is None else r.trainer
        cells.setdefault((r.device, model_label(r), r.batch_size), {})[col] = r.peak_allocated_bytes
    expected = [f"| {d} | {m} | {b} | {fmt_bytes(c['floor'])} | {fmt_bytes(c['fps-profile'])} | "
                f"{fmt_bytes(c['peft-shira'])} | {c['peft-shira'] / c['fps-profile']:.2f}x | {fmt_bytes(c['full'])} |"
                for (d, m, b), c in cells.items()]
    table = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith(("| device",
                                                                                                      "| ---"))]
    assert table == expected
    # PEFT's step needs more than fps-profile's everywhere, and less than full fine-tuning
    assert all(c["fps-profile"] < c["peft-shira"] < c["full"] for c in cells.values())
