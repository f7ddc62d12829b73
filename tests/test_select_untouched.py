"""``select()`` leaves the model exactly as it found it, BatchNorm statistics included.

The model is put in a deliberately mixed state first (some submodules in eval mode,
some parameters frozen, some with a ``.grad``, running statistics that are not
their initial values), so that restoring "the usual" state would not pass.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from fps_profile import select
from fps_profile.selection.selectors import list_selectors

IMG = 64


def make_bn_model(name: str = "test_resnet"):
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=5)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.running_mean.copy_(0.1 * torch.randn(mod.running_mean.shape, generator=gen))
                mod.running_var.copy_(1 + torch.rand(mod.running_var.shape, generator=gen))
                mod.num_batches_tracked.fill_(7)
    model.train()
    next(iter(model.children())).eval()  # one submodule in eval mode, the rest training
    params = dict(model.named_parameters())
    params["fc.weight" if "fc.weight" in params else "classifier.weight"].grad = torch.randn(
        params["fc.weight" if "fc.weight" in params else "classifier.weight"].shape, generator=gen)
    first = next(iter(params.values()))
    first.requires_grad_(False)
    return model


def batches(n: int = 2, batch: int = 4):
    gen = torch.Generator().manual_seed(2)
    return [(torch.randn(batch, 3, IMG, IMG, generator=gen), torch.randint(0, 3, (batch,), generator=gen))
            for _ in range(n)]


def snapshot(model):
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "training": [(n, m.training) for n, m in model.named_modules()],
        "requires_grad": [(n, p.requires_grad) for n, p in model.named_parameters()],
        "grads": [(n, p.grad, None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()],
        "bn_flags": [(n, getattr(m, "track_running_stats", None), getattr(m, "momentum", None))
                     for n, m in model.named_modules()],
    }


def assert_unchanged(model, before):
    after = model.state_dict(keep_vars=True)
    assert list(after) == list(before["state"])
    for k, v in before["state"].items():
        assert after[k].dtype == v.dtype and torch.equal(after[k].detach(), v), k
    assert [(n, m.training) for n, m in model.named_modules()] == before["training"]
    assert [(n, p.requires_grad) for n, p in model.named_parameters()] == before["requires_grad"]
    for (n, grad, value), (_, p) in zip(before["grads"], model.named_parameters()):
        assert p.grad is grad, n  # the same object, not a copy
        if grad is not None:
            assert torch.equal(grad, value), n
    assert [(n, getattr(m, "track_running_stats", None), getattr(m, "momentum", None))
            for n, m in model.named_modules()] == before["bn_flags"]


@pytest.mark.parametrize("selector", list_selectors())
def test_every_selector_leaves_a_batchnorm_model_untouched(selector):
    model = make_bn_model()
    before = snapshot(model)
    mask = select(model, batches(), selector, k=1)
    assert mask.stats().trainable > 0
    assert_unchanged(model, before)


@pytest.mark.parametrize("options", [{"loss": "ce", "views": 1}, {"num_batches": 2}])
def test_gradient_selectors_leave_model_untouched_with_options(options):
    model = make_bn_model()
    before = snapshot(model)
    select(model, batches(), "gps" if "loss" in options else "snip", fraction=0.05, **options)
    assert_unchanged(model, before)


def test_untouched_even_when_the_selection_fails():
    model = make_bn_model()
    before = snapshot(model)
    with pytest.raises(Exception, match="larger than a row"):
        select(model, batches(), "gps", k=10**6)
    assert_unchanged(model, before)


def test_non_batchnorm_running_statistics_are_restored():
    # EvoNorm-B0 keeps a running variance it updates itself in train mode (not a torch _BatchNorm)
    from timm.layers import EvoNorm2dB0

    model = make_bn_model()
    model.add_module("evo", EvoNorm2dB0(3))
    forward = model.forward
    model.forward = lambda x: forward(model.evo(x))
    with torch.no_grad():
        model.evo.running_var.uniform_(0.5, 2.0)
    before = snapshot(model)
    moved = copy.deepcopy(model.evo).train()
    moved(batches(1)[0][0])
    assert not torch.equal(moved.running_var, model.evo.running_var)  # train mode does update it
    for selector in ("gps", "snip", "magnitude"):
        select(model, batches(), selector, k=1)
        assert_unchanged(model, before)


def test_train_mode_semantics_kept_gradients_as_plain_train_mode():
    """SNIP's mask equals one from a plain train-mode pass on a copy (which does move the BN stats)."""
    model = make_bn_model()
    data = batches(1)
    mask = select(model, data, "snip", k=1)
    ref = copy.deepcopy(model)
    ref.train()
    for p in ref.parameters():
        p.requires_grad_(True)
        p.grad = None
    F.cross_entropy(ref(data[0][0]), data[0][1]).backward()
    moved = [n for n, b in ref.named_buffers() if n.endswith("running_mean")
             and not torch.equal(b, dict(model.named_buffers())[n])]
    assert moved  # the reference did update its statistics; select() did not
    params = dict(ref.named_parameters())
    compared = 0
    for name, m in mask.items():
        if m.dim() >= 2 and not m.all() and m.any():
            score = (params[name].detach() * params[name].grad).abs().reshape(m.shape[0], -1)
            top2 = score.topk(2, dim=1).values
            # The reference runs the very ops SNIP runs (one train-mode cross-entropy pass on the same
            # batch, same kernels, same order), so the scores agree bit for bit; only exact ties (dead
            # units score 0) are left out.
            clear = top2[:, 0] > top2[:, 1]
            expected = torch.zeros_like(score, dtype=torch.bool).scatter_(1, score.argmax(1, keepdim=True), True)
            assert torch.equal(m.reshape(m.shape[0], -1)[clear], expected[clear]), name
            compared += int(clear.sum())
    assert compared > 100
