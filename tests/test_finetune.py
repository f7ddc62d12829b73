"""The finetune phase: what a selection is worth, measured by the protocol of fps_profile.measure.training.

Every cell here fine-tunes a tiny user model (a file factory, so the factory path runs through the
phase too) on scikit-learn's digits 5-9 (8x8 grey images, 5 classes, 717 training images): a few
hundred parameters, a second per cell.
"""

from __future__ import annotations

import textwrap

import pytest
import torch

from fps_profile.measure import phases
from fps_profile.measure.backends import backend_for
from fps_profile.measure.inputs import build_inputs
from fps_profile.measure.runner import measure
from fps_profile.rows.cell import Cell

pytest.importorskip("sklearn")

TINY = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    """conv 1->8 (3x3), BatchNorm, ReLU, 2x2 max-pool, linear 128->32, dropout, classifier ``head``."""

    def __init__(self, num_classes=10, dropout=0.0):
        super().__init__()
        self.input_size = (1, 8, 8)
        self.num_classes = num_classes
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 16, 32)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(32, num_classes)

    def get_classifier(self):
        return self.head

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = nn.functional.max_pool2d(x, 2).flatten(1)
        return self.head(self.drop(torch.relu(self.fc(x))))


def make(num_classes=10):
    return TinyNet(num_classes)


def dropped(num_classes=10):
    return TinyNet(num_classes, dropout=0.5)
'''
DATA, CLASSES = "digits:5-9", 5
STEPS, BATCH = 30, 32


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("tinymodels")
    (folder / "tinynet.py").write_text(textwrap.dedent(TINY))
    return str(folder / "tinynet.py")


def cell(model: str, selector=None, **kw) -> Cell:
    options = (("loss", "ce"),) if selector == "gps" else ()  # SupCon needs timm's pre-logits hooks
    values = dict(model=f"{model}:make", batch_size=BATCH, phase="finetune", selector=selector, budget="k=2",
                  data=DATA, steps=STEPS, lr=1e-2, options=options)
    return Cell(**{**values, **kw})


def test_a_cell_repeats_to_the_last_digit_and_another_seed_changes_it(tiny):
    from fps_profile.run.isolation import run_isolated  # fresh processes: peaks free of other tests' tensors

    first, again = run_isolated(cell(tiny, "fps")), run_isolated(cell(tiny, "fps"))
    assert first.status == again.status == "ok", (first.error, again.error)
    # The same seed: the same init, split, batches, mask and steps, so the same floats exactly.
    for field in ("eval_accuracy", "eval_loss", "train_loss_final", "params_trainable", "peak_allocated_bytes",
                  "select_peak_bytes"):
        assert getattr(first, field) == getattr(again, field), field
    other = run_isolated(cell(tiny, "fps", seed=1))
    assert other.status == "ok" and other.seed == 1
    assert other.train_loss_final != first.train_loss_final  # another init and other batches
    assert other.env["data"]["data_split_seed"] == 1 and first.env["data"]["data_split_seed"] == 0


def test_full_fine_tuning_beats_the_frozen_model_and_every_selector_beats_chance(tiny):
    rows = {s: measure(cell(tiny, s)) for s in (None, "frozen", "head", "fps", "gps", "magnitude", "random")}
    assert all(r.status == "ok" for r in rows.values()), {s: r.error for s, r in rows.items()}
    chance = 1 / CLASSES
    assert rows[None].eval_accuracy > rows["frozen"].eval_accuracy + 0.3
    assert abs(rows["frozen"].eval_accuracy - chance) < 0.15  # a random classifier on 5 balanced classes
    for s in ("head", "fps", "gps", "magnitude", "random"):
        assert rows[s].eval_accuracy > chance + 0.2, s
    frozen = rows["frozen"]
    assert frozen.examples_seen == 0 and frozen.steps is None and frozen.train_loss_final is None
    assert rows[None].params_trainable == rows[None].params_total


def test_the_protocol_figures(tiny):
    """Steps counted once; the tracked step is a train_step's measured run; the selection is the select phase's.
    Each in a fresh process: the cpu tracker counts every live tensor, those earlier tests leave too."""
    from fps_profile.run.isolation import run_isolated

    ft = run_isolated(cell(tiny, "fps"))
    assert ft.examples_seen == STEPS * BATCH and ft.steps == STEPS and ft.lr == 1e-2
    assert len(ft.wall_times_s) == STEPS - 1 and ft.wall_time_s == sorted(ft.wall_times_s)[(STEPS - 1) // 2]
    step = run_isolated(cell(tiny, "fps", phase="train_step"))
    select = run_isolated(cell(tiny, "fps", phase="select"))
    assert step.status == select.status == "ok"
    # Exact on the cpu: the same mask, model and batch shape, AdamW's moments present from the step's start.
    assert ft.peak_allocated_bytes == step.peak_allocated_bytes
    assert ft.select_peak_bytes == select.peak_allocated_bytes
    assert ft.params_trainable == step.params_trainable == select.params_trainable
    assert ft.peak_phase == step.peak_phase and ft.peak_breakdown_bytes == step.peak_breakdown_bytes
    frozen = measure(cell(tiny, "frozen"))
    inference = measure(cell(tiny, None, phase="inference"))
    assert frozen.peak_allocated_bytes == inference.peak_allocated_bytes and len(frozen.wall_times_s) == 1


@pytest.mark.parametrize("selector", ["fps", None, "head", "frozen"])
def test_the_sim_predicts_the_cpu_step_and_has_no_accuracy(tiny, selector):
    from fps_profile.run.isolation import run_isolated

    # Each in a fresh process, as sweeps measure: in this one, tensors earlier tests keep alive would
    # count on the cpu (its tracker counts every live tensor, as the CUDA allocator does).
    cpu, sim = run_isolated(cell(tiny, selector)), run_isolated(cell(tiny, selector, device="sim:cpu"))
    assert cpu.status == sim.status == "ok", (cpu.error, sim.error)
    assert sim.peak_allocated_bytes == cpu.peak_allocated_bytes  # sim:cpu's claim, held on the finetune phase
    assert sim.params_trainable == cpu.params_trainable
    assert sim.eval_accuracy is None and sim.eval_loss is None and sim.wall_time_s is None
    assert sim.env["data"]["data_classes"] == ["5", "6", "7", "8", "9"]


def _prepared(tiny, selector, steps=3):
    c = cell(tiny, selector, steps=steps)
    built = build_inputs(c, torch.device("cpu"), torch.float32)
    ft = phases.prepare(c, built.model, built.batches, backend_for("cpu")).fn
    return ft, built.model


def _weights(model) -> dict[str, torch.Tensor]:
    """Every weight as the forward sees it (a sparse-trainable one through its parametrization), and buffers."""
    from torch.nn.utils import parametrize

    out = {}
    for mname, module in model.named_modules():
        if "parametrizations" in mname:
            continue
        attrs = list(module._parameters) + list(module._buffers)
        attrs += list(module.parametrizations.keys()) if parametrize.is_parametrized(module) else []
        for attr in attrs:
            value = getattr(module, attr)
            if value is not None:
                out[f"{mname}.{attr}" if mname else attr] = value.detach().clone()
    return out


@pytest.mark.parametrize("selector", ["fps", "head", "frozen"])
def test_only_what_the_mask_allows_changes(tiny, selector):
    ft, model = _prepared(tiny, selector)
    before = _weights(model)
    for _ in range(ft.steps):
        ft()
    after = _weights(model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    if selector == "frozen":
        assert ft.steps == 0 and not changed
        return
    if selector == "head":  # the classifier alone; eval mode: BatchNorm's running statistics untouched
        assert changed == {"head.weight", "head.bias"}
        return
    from fps_profile.measure.phases import BudgetSpec, select_fn

    c = cell(tiny, selector)
    fresh = build_inputs(c, torch.device("cpu"), torch.float32)  # the same seed: the same model and mask
    mask = select_fn(fresh.model, fresh.batches, "fps", BudgetSpec.parse("k=2"), seed=c.seed)()
    for name in ("conv.weight", "fc.weight"):
        moved = before[name] != after[name]
        assert torch.equal(moved, mask[name]), name  # AdamW moves every trainable entry, and no other
    assert {"head.weight", "head.bias", "conv.bias", "fc.bias", "bn.running_mean", "bn.running_var"} <= changed
    assert "bn.weight" not in changed  # norms are frozen in the gps scope; their statistics adapt (train mode)


def test_learning_rate_and_steps_follow_a_cosine(tiny):
    ft, _ = _prepared(tiny, None, steps=4)
    lrs = []
    for _ in range(4):
        lrs.append(ft.optimizer.param_groups[0]["lr"])
        ft()
    # 1e-2 * (1 + cos(pi * i / 4)) / 2 for i = 0..3
    assert lrs == pytest.approx([1e-2, 1e-2 * (1 + 2 ** -0.5) / 2, 5e-3, 1e-2 * (1 - 2 ** -0.5) / 2], rel=1e-12)
