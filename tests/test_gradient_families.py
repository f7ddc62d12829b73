"""GPS and SNIP on CNN and hybrid families: pre-logits from timm's head, losses, clear errors.

The reference takes the pre-logits feature another way: a forward pre-hook on the
classifier (found by hand) captures its input during a plain ``model(x)``; SupCon
is then the anchor-by-anchor formula of ``test_selectors.ref_supcon``. Everything
runs in float64, and only rows whose best score is not tied are compared (ReLU
networks have dead units whose gradients are all zero).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fps_profile import UserError, select

from test_selectors import ref_supcon

# timm's test models (a few hundred thousand parameters) and their classifier, by hand
FAMILIES = {"test_resnet": "fc", "test_efficientnet": "classifier", "test_convnext": "head.fc",
            "test_coatnet": "head.fc"}


IMG = 64


def make(name: str) -> nn.Module:
    from fps_profile.models import create_model

    torch.manual_seed(0)
    return create_model(name, dtype=torch.float64, image_size=IMG, num_classes=5)


def data(model, n=1, batch=3):
    gen = torch.Generator().manual_seed(3)
    return [(torch.randn(batch, 3, IMG, IMG, generator=gen, dtype=torch.float64),
             torch.tensor([0, 1, 0][:batch])) for _ in range(n)]


def ref_supcon_grads(model, batches, classifier: str):
    model = copy.deepcopy(model).train()
    for p in model.parameters():
        p.requires_grad_(True)
        p.grad = None
    seen = []
    model.get_submodule(classifier).register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    for images, labels in batches:
        model(torch.cat([images, images.flip(-1)]))
        z = nn.functional.normalize(seen.pop().flatten(1), dim=1)
        ref_supcon(z, torch.cat([labels, labels]), 0.07).backward()
    return {n: p.grad for n, p in model.named_parameters()}


def assert_top1_matches(mask, scores: dict[str, torch.Tensor]) -> int:
    compared = 0
    for name, m in mask.items():
        if m.dim() < 2 or m.all() or not m.any():
            continue
        s = scores[name].abs().reshape(m.shape[0], -1)
        top2 = s.topk(2, dim=1).values
        # float64 (numerics.deep_atol): a ~60-stage forward and backward moves a score by ~1e-12 of
        # itself; a row whose best two scores are closer than 1e-9 is a tie rounding may break either way
        clear = top2[:, 0] > top2[:, 1] * (1 + 1e-9)
        expected = torch.zeros_like(s, dtype=torch.bool).scatter_(1, s.argmax(1, keepdim=True), True)
        assert torch.equal(m.reshape(m.shape[0], -1)[clear], expected[clear]), name
        compared += int(clear.sum())
    return compared


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_gps_supcon_on_pre_logits_matches_hook_reference(name):
    model = make(name)
    batches = data(model)
    mask = select(model, batches, "gps", k=1)
    grads = ref_supcon_grads(model, batches, FAMILIES[name])
    assert grads[f"{FAMILIES[name]}.weight"] is None  # SupCon never reaches the classifier ...
    assert mask[f"{FAMILIES[name]}.weight"].all()  # ... which the gps scope trains whole
    assert assert_top1_matches(mask, grads) > 50


def test_snip_cross_entropy_on_a_cnn():
    model = make("test_efficientnet")
    batches = data(model)
    mask = select(model, batches, "snip", k=1)
    ref = copy.deepcopy(model).train()
    nn.functional.cross_entropy(ref(batches[0][0]), batches[0][1]).backward()
    scores = {n: p.detach() * p.grad for n, p in ref.named_parameters()}
    assert assert_top1_matches(mask, scores) > 50


def test_supcon_with_a_ranked_classifier_says_why_it_gets_no_gradient():
    model = make("test_resnet")
    with pytest.raises(UserError, match=r"'fc\.weight' \(Linear\) received no gradient: the loss does not use "
                       r"it \(SupCon is computed on the pre-logits features.*loss='ce'"):
        select(model, data(model), "gps", k=1, scope="all-weights")
    mask = select(model, data(model), "gps", k=1, scope="all-weights", loss="ce", views=1)
    assert int(mask["fc.weight"].sum()) == 5


def test_cross_entropy_needs_logits():
    headless = make("test_resnet").float()
    headless.reset_classifier(0)
    images = torch.randn(2, 3, 64, 64)
    labels = torch.tensor([0, 1])
    for selector, options in (("snip", {}), ("gps", {"loss": "ce", "views": 1})):
        with pytest.raises(UserError, match=rf"selector '{selector}': the cross-entropy loss needs logits, but "
                           r"ResNet has no classifier \(num_classes=0\)"):
            select(headless, [(images, labels)], selector, k=1, **options)
    conv = nn.Sequential(nn.Conv2d(3, 4, 3))
    with pytest.raises(UserError, match=r"needs \[batch, classes\] logits, but Sequential returned \[2, 4, 62, 62\]"):
        select(conv, [(images, labels)], "snip", k=1)
    small = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64 * 64, 3))
    with pytest.raises(UserError, match=r"a label is out of range for the model's 3 outputs"):
        select(small, [(images, torch.tensor([0, 7]))], "snip", k=1)


def test_forward_head_without_pre_logits_is_one_line():
    class Old(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.fc = nn.Linear(12, 6), nn.Linear(6, 2)

        def forward_features(self, x):
            return self.body(x.flatten(1))

        def forward_head(self, x):
            return self.fc(x)

    with pytest.raises(UserError, match=r"Old\.forward_head takes no pre_logits"):
        select(Old(), [(torch.randn(2, 3, 2, 2), torch.tensor([0, 1]))], "gps", k=1)


def test_an_unused_layer_is_named_without_the_classifier_hint():
    model = make("test_resnet")
    model.add_module("unused", nn.Linear(4, 4).double())
    with pytest.raises(UserError, match=r"'unused\.weight' \(Linear\) received no gradient: the loss does not "
                       r"use it$"):
        select(model, data(model), "gps", k=1)
