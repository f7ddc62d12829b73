"""The ``gps`` scope on plain ViTs is frozen in time: roles and masks as the GPS name rules gave them.

``tests/data/gps_scope_vit.json`` holds:

* the role of every tensor of ``vit_base_patch16_224`` (built on the meta device), as the
  name-rules-only scope gave them (before the scope learned model types and timm metadata);
* for every built-in selector, the mask of the tiny ViT (with and without LayerScale) at
  ``k=1`` and at a global ``fraction``, every tensor's entries as packed bits. The model and
  batches are float64.

Tensors outside the ranking (frozen, or trained whole) must match exactly. A ranked tensor's
stored mask must still be the top entries of today's scores, away from ties
(:func:`numerics.mask_mismatches`): a score moved by rounding alone (the CPU's kernels sum in
other orders) may swap entries that tie to within the band below, and nothing else.

Regenerate only on purpose: ``PYTHONPATH=$PWD python tests/test_scope_regression.py``.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fps_profile import select
from fps_profile.selection.scope import Role, assign_roles
from fps_profile.selection.selectors import Target, create

from conftest import make_batches, make_tiny_vit
from numerics import deep_atol, mask_mismatches, sum_rtol

GOLDEN = Path(__file__).parent / "data" / "gps_scope_vit.json"
SELECTORS = ("fps", "gps", "magnitude", "random", "snip", "wanda")
BUDGETS = {"k=1": {"k": 1}, "fraction=0.05": {"fraction": 0.05}}
TINY = {"tiny_vit": {}, "tiny_vit_ls": {"init_values": 1e-5}}
TOKENS = 3 * 6 * 17  # make_batches(): 3 batches x 6 images x (16 patches + the class token)
# Tie bands relative to a tensor's largest score. FPS and Wanda keep float32 statistics (sums of
# same-sign terms); the gradient selectors run in float64 (~40 stages of sums of at most 2 x TOKENS
# terms; SupCon's 1 / 0.07 and a factor 10 for cancellation, as in test_selectors.py); magnitude and
# random scores involve no arithmetic that an order could change.
FORWARD_TOL = sum_rtol(TOKENS, torch.float32, extra_ops=3)
GRAD_TOL = deep_atol(1.0, 2 * TOKENS, depth=40) / 0.07 * 10
TOL = {"fps": FORWARD_TOL, "wanda": FORWARD_TOL, "gps": GRAD_TOL, "snip": GRAD_TOL, "magnitude": 0.0, "random": 0.0}


def vit_base_roles() -> dict[str, str]:
    import timm

    with torch.device("meta"):
        model = timm.create_model("vit_base_patch16_224", pretrained=False)
    return {n: r.value for n, (r, _, _) in assign_roles(model, "gps").items()}


def encode(mask_tensor: torch.Tensor) -> str:
    """``"3x4:<base64 of the packed bits>"``."""
    bits = np.packbits(mask_tensor.reshape(-1).numpy().astype(np.uint8))
    return "x".join(map(str, mask_tensor.shape)) + ":" + base64.b64encode(bits.tobytes()).decode()


def decode(text: str) -> torch.Tensor:
    shape, _, data = text.partition(":")
    dims = tuple(int(d) for d in shape.split("x")) if shape else ()
    n = int(np.prod(dims)) if dims else 1
    bits = np.unpackbits(np.frombuffer(base64.b64decode(data), dtype=np.uint8))[:n]
    return torch.from_numpy(bits.astype(bool)).reshape(dims)


def tiny_case(variant: str, selector: str, budget: str):
    """Today's mask of the float64 tiny ViT, and its selector's scores of the ranked tensors."""
    model = make_tiny_vit(**TINY[variant]).double()
    batches = [(x.double(), y) for x, y in make_batches()]
    mask = select(model, batches, selector, **BUDGETS[budget])
    params = dict(model.named_parameters())
    targets = [Target(n, params[n], m, a) for n, (r, m, a) in assign_roles(model, "gps").items() if r is Role.RANKED]
    sel = create(selector)
    sel.prepare(model, batches, targets)
    scores = {t.name: sel.score(t).detach().double() for t in targets}
    sel.release()
    return mask, scores


def compute() -> dict:
    return {
        "vit_base_patch16_224": vit_base_roles(),
        "tiny": {f"{v}/{s}/{b}": {n: encode(m) for n, m in tiny_case(v, s, b)[0].items()}
                 for v in TINY for s in SELECTORS for b in BUDGETS},
    }


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


def test_vit_base_roles_unchanged(golden):
    want = golden["vit_base_patch16_224"]
    got = vit_base_roles()
    assert list(got) == list(want)
    changed = {n: (want[n], got[n]) for n in want if got[n] != want[n]}
    assert not changed
    # the golden file itself says what GPS says: 49 ranked weights, the head trainable
    assert sum(r == "ranked" for r in want.values()) == 1 + 12 * 4
    assert want["head.weight"] == "trainable" and want["blocks.0.norm1.bias"] == "frozen"


@pytest.mark.parametrize("variant", list(TINY))
@pytest.mark.parametrize("selector", SELECTORS)
def test_tiny_vit_masks_unchanged(golden, variant, selector):
    for budget, spec in BUDGETS.items():
        want = {n: decode(v) for n, v in golden["tiny"][f"{variant}/{selector}/{budget}"].items()}
        mask, scores = tiny_case(variant, selector, budget)
        assert list(mask) == list(want)
        whole = [n for n in want if n not in scores and not torch.equal(mask[n], want[n])]
        assert not whole, (budget, whole)
        ranked = {n: want[n] for n in scores}
        assert not mask_mismatches(ranked, scores, tol=TOL[selector], **spec), budget
        assert not mask_mismatches(mask, scores, tol=TOL[selector], **spec), budget


def test_packed_bits_round_trip():
    m = torch.rand(7, 3, generator=torch.Generator().manual_seed(0)) > 0.5
    assert torch.equal(decode(encode(m)), m) and decode(encode(m)).shape == (7, 3)


if __name__ == "__main__":
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(compute(), indent=1) + "\n")
    print(f"wrote {GOLDEN}")
