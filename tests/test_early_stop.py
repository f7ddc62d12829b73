"""FPS and Wanda stop each forward right after the last target use (``selectors/_early_stop.py``).

The claims: the statistics are bit-identical to the whole forward's (so the mask is the
same, and equals the float64 hand references of test_selectors / test_llm_selectors);
nothing after the last scored layer runs; the order is right when a weight is used several
times; a model whose order cannot be known runs whole; the peak drops below the
inference floor by what the head would have held (derived by hand below), on the exact
CPU tracker and on the sim to the byte.
"""

from __future__ import annotations

import contextlib
import gc

import pytest
import timm
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor
from timm.models.vision_transformer import VisionTransformer

import fps_profile
from fps_profile import select
from fps_profile.measure import phases
from fps_profile.knobs import Knobs
from fps_profile.selection.scope import Role, assign_roles
from fps_profile.selection.selectors import SELECTORS, Selector, Target, _early_stop
from fps_profile.selection.selectors._activations import InputStats, scale_rows
from fps_profile.sim import Simulator
from fps_profile.trackers import LiveTensorBytes

from conftest import make_batches, make_tiny_vit
from numerics import assert_mask_matches, mask_mismatches, sum_rtol
from test_selectors import RANKED, ref_fps_scores, ref_wanda_scores


def targets_of(model: nn.Module, scope: str = "gps") -> list[Target]:
    params = dict(model.named_parameters())
    return [Target(n, params[n], mod, attr) for n, (role, mod, attr) in assign_roles(model, scope).items()
            if role is Role.RANKED]


@contextlib.contextmanager
def counting_calls(model: nn.Module):
    """Module name -> how many times its forward was entered (a pre-hook on every module)."""
    calls: dict[str, int] = {}
    handles = [m.register_forward_pre_hook(lambda _m, _a, n=n: calls.__setitem__(n, calls.get(n, 0) + 1))
               for n, m in model.named_modules()]
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def whole_forward():
    """Selections inside run every forward to its end, as before the early stop."""
    mp = pytest.MonkeyPatch()
    mp.setattr(_early_stop, "plan_for", lambda *args, **kwargs: None)
    try:
        yield
    finally:
        mp.undo()


def collect(model, batches, ord: int, stop: bool, **kwargs) -> tuple[InputStats, dict[str, int]]:
    stats = InputStats(targets_of(model), ord=ord, selector="test")
    with counting_calls(model) as calls:
        stats.collect(model, batches, stop_early=stop, **kwargs)
    return stats, calls


def assert_same_statistics(a: InputStats, b: InputStats) -> None:
    assert a.sums.keys() == b.sums.keys() and a.counts == b.counts
    for key in a.sums:
        assert torch.equal(a.sums[key], b.sums[key])  # bit-identical: the same ops on the same inputs


# ----------------------------------------------------------------------------- the models

def _lm(kind):
    from test_llm_selectors import make_gpt2, make_llama, token_batches

    return (make_llama() if kind == "llama" else make_gpt2()).eval(), token_batches()


def _lm_reference(model, batches, kind):
    from test_llm_selectors import ref_activation_scores

    return ref_activation_scores(model, batches, kind)


def _image_reference(model, batches, kind):
    names = [t.name for t in targets_of(model)]
    return (ref_fps_scores if kind == "fps" else ref_wanda_scores)(model, batches, names)


def _resnet():
    torch.manual_seed(0)
    return timm.create_model("resnet10t", num_classes=10).eval(), make_batches(2, 3)


# name -> (model and batches, modules after the stop, the module of the last target use, float64 reference)
CASES = {
    "vit": (lambda: (make_tiny_vit(), make_batches(2, 4)), ["norm", "head"], "blocks.1.mlp.fc2",
            _image_reference),
    "resnet": (_resnet, ["global_pool", "fc"], "layer4.0.conv2", _image_reference),
    "llama": (lambda: _lm("llama"), ["model.norm", "lm_head"], "model.layers.1.mlp.down_proj", _lm_reference),
    "gpt2": (lambda: _lm("gpt2"), ["transformer.ln_f", "lm_head"], "transformer.h.1.mlp.c_proj", _lm_reference),
}


@pytest.mark.parametrize("kind", ["fps", "wanda"])
@pytest.mark.parametrize("case", list(CASES))
def test_statistics_are_bit_identical_and_nothing_after_the_last_use_runs(case, kind):
    make, tail, last, _ = CASES[case]
    model, batches = make()
    ord = 1 if kind == "fps" else 2
    whole, whole_calls = collect(model, batches, ord, stop=False)
    early, calls = collect(model, batches, ord, stop=True)
    assert_same_statistics(early, whole)
    assert (early.stopped, early.full, whole.stopped, whole.full) == (len(batches), 0, 0, len(batches))
    assert calls[last] == whole_calls[last] == len(batches)  # the trace is no call the hooks see
    for name in tail:
        assert calls.get(name, 0) == 0 and whole_calls[name] == len(batches), name


def stat_tol(batches) -> float:
    """Tie band for float32 statistics against float64 references of the same inputs: sums of at most
    every token (an image's every pixel position bounds any layer's positions) of same-sign terms, then a
    division or root and |w| (tests/numerics.py)."""
    n = sum(x.numel() if x.dim() == 2 else x.numel() // x.shape[1] for x, _ in batches)
    return sum_rtol(n, torch.float32, extra_ops=3)


@pytest.mark.parametrize("kind", ["fps", "wanda"])
@pytest.mark.parametrize("case", list(CASES))
def test_mask_equals_the_whole_forward_mask_and_the_hand_reference(case, kind):
    from test_llm_selectors import out_axis

    make, tail, _, reference = CASES[case]
    model, batches = make()
    with counting_calls(model) as calls:
        mask = select(model, batches, kind, k=2)
    assert all(calls.get(name, 0) == 0 for name in tail)
    with whole_forward():
        whole = select(model, batches, kind, k=2)
    assert mask.keys() == whole.keys() and all(torch.equal(mask[n], m) for n, m in whole.items())
    ref = reference(model, batches, kind)
    if case in ("llama", "gpt2"):
        for n, scores in ref.items():  # per output neuron: rows, or columns of a Conv1D
            t = (lambda x: x.t()) if out_axis(model, n) == 1 else (lambda x: x)
            assert not mask_mismatches({n: t(mask[n])}, {n: t(scores)}, k=2, tol=stat_tol(batches)), n
    else:
        assert_mask_matches(mask, ref, k=2, tol=stat_tol(batches))


@pytest.mark.parametrize("knob", ["micro_batch", "autocast"])
@pytest.mark.parametrize("case", ["vit", "llama", "gpt2"])
def test_micro_batches_and_autocast_keep_the_statistics(case, knob):
    make, tail, _, _ = CASES[case]
    model, batches = make()
    kwargs = {"micro_batch": 1} if knob == "micro_batch" else {}

    def context():  # one autocast region per run: its cache of bf16 weight copies lives as long
        return torch.autocast("cpu", dtype=torch.bfloat16) if knob == "autocast" else contextlib.nullcontext()

    with context():  # first, on a fresh model: the trace must leave no fake weight copy in that cache
        early, calls = collect(model, batches, 1, stop=True, **kwargs)
    with context():
        whole, _ = collect(model, batches, 1, stop=False, **kwargs)
    assert_same_statistics(early, whole)
    forwards = sum(b[0].shape[0] for b in batches) if knob == "micro_batch" else len(batches)
    assert (early.stopped, early.full) == (forwards, 0)
    assert all(calls.get(name, 0) == 0 for name in tail)
    model, batches = make()
    amp = {"amp": "bf16"} if knob == "autocast" else kwargs
    mask = select(model, batches, "fps", k=1, **amp)
    with whole_forward():
        assert all(torch.equal(mask[n], m) for n, m in select(model, batches, "fps", k=1, **amp).items())


# ----------------------------------------------------------------------------- the order

class Reuse(nn.Module):
    """inp -> block -> mid -> (block again | a module tied to block's weight) -> head.

    In module order the last ranked weight is ``mid``'s: a stop after it would miss the
    second use of ``block.weight``, which comes later in execution order.
    """

    def __init__(self, how: str, classes: int = 300) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.how = how
        self.inp, self.block, self.mid = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 16)
        self.tied = nn.Linear(16, 16)
        self.tied.weight = self.block.weight
        self.head = nn.Linear(16, classes)  # "head": trained whole by the gps scope, not ranked

    def forward(self, x):
        h = self.mid(self.block(self.inp(x).tanh()).tanh()).tanh()
        h = (self.block(h) if self.how == "twice" else self.tied(h)).tanh()
        return self.head(h)


def row_batches(n: int = 3, rows: int = 5) -> list[tuple[torch.Tensor, None]]:
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(rows, 8, generator=g), None) for _ in range(n)]


@pytest.mark.parametrize("how", ["twice", "tied"])
def test_a_weight_used_twice_is_scored_over_both_uses(how):
    model, batches = Reuse(how), row_batches()
    assert [t.name for t in targets_of(model)] == ["inp.weight", "block.weight", "mid.weight"]
    whole, _ = collect(model, batches, 1, stop=False)
    early, calls = collect(model, batches, 1, stop=True)
    assert_same_statistics(early, whole)
    assert early.counts[id(model.block.weight)] == 2 * 3 * 5  # both uses, every token of 3 batches
    assert (early.stopped, calls.get("head", 0)) == (3, 0)
    second = "block" if how == "twice" else "tied"
    assert calls[second] == (6 if how == "twice" else 3)


class DataDependent(Reuse):
    def forward(self, x):
        h = self.block(self.inp(x).tanh()).tanh()
        if h.sum() > 0:  # needs values: a fake tensor cannot say
            h = self.mid(h).tanh()
        return self.head(h)


def test_a_model_whose_order_needs_values_runs_whole():
    model, batches = DataDependent("twice"), row_batches()
    whole, _ = collect(model, batches, 1, stop=False)
    early, calls = collect(model, batches, 1, stop=True)
    assert_same_statistics(early, whole)
    assert (early.stopped, early.full, calls["head"]) == (0, 3, 3)


_CALLS = [0]  # state outside the model: the trace cannot put it back


class Alternating(Reuse):
    """Path A (block, then mid) on odd calls, path B (mid, then block) on even ones."""

    def forward(self, x):
        _CALLS[0] += 1
        first, second = (self.block, self.mid) if _CALLS[0] % 2 else (self.mid, self.block)
        return self.head(second(first(self.inp(x).tanh()).tanh()).tanh())


def test_a_forward_that_departs_from_its_trace_runs_whole_and_is_not_traced_again(monkeypatch):
    traces = []
    trace = _early_stop._trace
    monkeypatch.setattr(_early_stop, "_trace", lambda *a: traces.append(1) or trace(*a))
    model, batches = Alternating("twice"), row_batches(n=1)
    _CALLS[0] = 0
    early, calls = collect(model, batches, 1, stop=True)  # the trace takes path A, the forward path B
    assert (early.stopped, early.full, calls["head"], len(traces)) == (0, 1, 1, 1)
    _CALLS[0] = 1
    whole, _ = collect(model, batches, 1, stop=False)  # path B, whole
    assert_same_statistics(early, whole)
    again, _ = collect(model, batches * 2, 1, stop=True)
    assert (again.stopped, again.full, len(traces)) == (0, 2, 1)  # not traced again


class Stateful(Reuse):
    """Counts its calls and caches a tensor on first use, as LeViT caches its attention biases."""

    def __init__(self) -> None:
        super().__init__("twice")
        self.calls = 0
        self.cache: dict[str, torch.Tensor] = {}

    def forward(self, x):
        self.calls += 1
        if "scale" not in self.cache:
            self.cache["scale"] = torch.full((16,), 0.5, dtype=x.dtype, device=x.device)
        h = self.mid(self.block(self.inp(x).tanh()).tanh() * self.cache["scale"]).tanh()
        return self.head(self.block(h).tanh())


def test_what_the_trace_changes_in_the_model_is_put_back():
    model, batches = Stateful(), row_batches()
    early, calls = collect(model, batches, 1, stop=True)
    assert (early.stopped, calls.get("head", 0)) == (3, 0)
    assert model.calls == 3  # the real forwards only
    assert not isinstance(model.cache["scale"], FakeTensor)
    assert model.cache["scale"].sum().item() == 8.0  # a real tensor, with values


class Swallowing(Reuse):
    """Catches any exception of its last layer and takes a fallback path (as attention kernels do)."""

    def forward(self, x):
        h = self.block(self.inp(x).tanh()).tanh()
        try:
            h = self.mid(h)
        except Exception:  # noqa: BLE001 - the point of this model
            h = self.mid(h * 1.0)  # another use of mid: must not count
        return self.head(h.tanh())


def test_a_model_that_catches_the_stop_gets_it_again():
    model, batches = Swallowing("twice"), row_batches()
    whole, _ = collect(model, batches, 1, stop=False)
    early, calls = collect(model, batches, 1, stop=True)
    assert_same_statistics(early, whole)
    assert (early.stopped, calls.get("head", 0), calls["mid"]) == (3, 0, 3)


# ----------------------------------------------------------------------------- plugins

def test_a_plugin_built_on_input_stats_stops_too():
    @fps_profile.register_selector("early-stop-test-plugin")
    class SumAbs(Selector):
        """|w| x sum |x| (no mean): a plugin on InputStats."""

        handles_micro_batch = True

        def prepare(self, model, batches, targets):
            self.stats = InputStats(targets, ord=1, selector=self.name)
            self.stats.collect(model, batches, self.micro_batch)

        def score(self, target):
            return scale_rows(target.param.detach().abs(), self.stats.stat(target)[0], target.out_axis)

    try:
        model, batches = make_tiny_vit(), make_batches(2, 4)
        with counting_calls(model) as calls:
            mask = select(model, batches, "early-stop-test-plugin", k=2)
        assert calls.get("head", 0) == 0 and calls["blocks.1.mlp.fc2"] == 2
        with whole_forward():
            whole = select(model, batches, "early-stop-test-plugin", k=2)
        assert all(torch.equal(mask[n], m) for n, m in whole.items())
        assert_mask_matches(mask, ref_fps_scores(model, batches, RANKED, pool="sum"), k=2, tol=stat_tol(batches))
    finally:
        SELECTORS.unregister("early-stop-test-plugin")


# ----------------------------------------------------------------------------- memory

B, N, D = 4, 17, 32  # batch, tokens (16 patches of 8x8 in 32x32 images + the class token), width
#: Every target's float32 input statistic: patch_embed (3 x 8 x 8), per block qkv, proj, fc1 (D) and fc2 (4D).
STATS = 4 * (3 * 8 * 8 + 2 * (D + D + D + 4 * D))


def big_head_vit(classes: int) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=D, depth=2, num_heads=2,
                             num_classes=classes).eval()


def cpu_peak(model: nn.Module, images: torch.Tensor, fn) -> int:
    """Peak bytes above the weights and the images, on real CPU tensors (as tests/test_sim.py counts)."""
    with LiveTensorBytes("cpu", include_existing=False) as live:
        for t in (*model.parameters(), *model.buffers(), images):
            live.track(t, check_budget=False)
        base = live.current
        live.reset_peak()
        out = fn()
        del out
    return live.peak - base


def sim_run(classes: int, what: str, amp: str | None = None):
    """Predicted peak bytes above the weights and images, and FLOPs, of ``what`` on ``sim:cpu``."""
    real = big_head_vit(classes)  # built outside: timm's initialisers need values
    with Simulator("sim:cpu") as sim:
        model = sim.module(real)
        images, labels = sim.batch(model, B, torch.float32)
        fn = (phases.inference_fn(model, images) if what == "inference"
              else phases.select_fn(model, [(images, None)], what, phases.BudgetSpec(k=1), knobs=Knobs(amp=amp)))
        stats = sim.measure(fn)
        held = sum(p.nbytes for p in model.parameters()) + images.nbytes + labels.nbytes
        return stats.peak_bytes - held, stats.flops


@pytest.mark.parametrize("classes", [8_000, 16_000])
def test_fps_peaks_below_the_inference_floor_by_what_the_head_would_hold(classes):
    """The floor peaks at the head: the final norm's output [B, N, D] and the logits [B, C].

    FPS without the stop peaks there too, with its statistics. With the stop it peaks in
    the last block's MLP, at the GELU (timm's Block and Mlp): the block stack's input (held
    by forward_features), the last block's input (held by Sequential), its residual after
    attention, norm2's output (held as the MLP's argument), fc1's output and the GELU's,
    [B, N, 4D] each: 12 x [B, N, D]; and every statistic but fc2's of the last block.
    The head's output never exists, so the difference is the logits less what the prefix
    holds beyond the floor's [B, N, D].
    """
    images = torch.randn(B, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model = big_head_vit(classes)
    act, logits = 4 * B * N * D, 4 * B * classes
    floor = cpu_peak(model, images, phases.inference_fn(model, images))
    assert floor == act + logits
    with whole_forward():
        assert cpu_peak(model, images, lambda: select(model, [images], "fps", k=1)) == floor + STATS
    fps = cpu_peak(model, images, lambda: select(model, [images], "fps", k=1))
    assert fps == 12 * act + STATS - 4 * 4 * D
    assert floor - fps == logits - 11 * act - (STATS - 4 * 4 * D) > 0
    # The sim predicts the same bytes, and FLOPs without the head's matrix product.
    (sim_floor, floor_flops), (sim_fps, fps_flops) = sim_run(classes, "inference"), sim_run(classes, "fps")
    assert (sim_floor, sim_fps) == (floor, fps)
    assert floor_flops - fps_flops == 2 * B * D * classes


@pytest.mark.parametrize("amp", [None, "bf16"])
@pytest.mark.parametrize("selector", ["fps", "wanda"])
def test_sim_equals_cpu_to_the_byte(selector, amp):
    # Under autocast the real forward allocates (and caches) bf16 copies of the weights; on the
    # sim too, which it would not if the trace had left its fake copies in autocast's cache.
    images = torch.randn(B, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model = big_head_vit(16_000)
    real = cpu_peak(model, images, lambda: select(model, [images], selector, k=1, amp=amp))
    assert sim_run(16_000, selector, amp)[0] == real


def test_the_stop_leaves_nothing_alive():
    """With the collector off (as in the sim), the forward's tensors are freed as the stop unwinds."""
    model, images = big_head_vit(8_000), torch.randn(B, 3, 32, 32)
    stats = InputStats(targets_of(model), ord=1, selector="test")
    enabled = gc.isenabled()
    gc.disable()
    try:
        with LiveTensorBytes("cpu", include_existing=False) as live:
            stats.collect(model, [(images, None)])
            assert stats.stopped == 1
            assert live.current == STATS
    finally:
        if enabled:
            gc.enable()


@pytest.mark.cuda
def test_on_a_cuda_gpu_the_stop_holds_and_peaks_below_the_floor():
    """Real CUDA parameters go through the fake trace (converted on use); autocast as a cell runs it."""
    from fps_profile.trackers import CudaAllocatorPeak

    dev = torch.device("cuda")
    model = big_head_vit(64_000).to(dev)
    images = torch.randn(64, 3, 32, 32, device=dev)
    for amp in (None, "bf16"):
        with counting_calls(model) as calls:
            mask = select(model, [images], "fps", k=1, amp=amp)
        assert calls.get("head", 0) == 0 and calls["blocks.1.mlp.fc2"] == 1
        with whole_forward():
            whole = select(model, [images], "fps", k=1, amp=amp)
        assert all(torch.equal(mask[n], m) for n, m in whole.items())
    peaks = {}
    for what, fn in (("floor", phases.inference_fn(model, images)),
                     ("fps", lambda: select(model, [images], "fps", k=1))):
        fn()  # warm-up: the trace, cuBLAS's workspace
        torch.cuda.synchronize(dev)
        with CudaAllocatorPeak(dev) as peak:
            out = fn()
            del out
        peaks[what] = peak.peak_allocated - peak.baseline
    assert peaks["fps"] < peaks["floor"] - 4 * 64 * 64_000 // 2  # the logits, [64, 64000] float32, never exist
