"""The ``gps`` scope on plain ViTs is frozen in time: roles and masks as the GPS name rules gave them.

``tests/data/gps_scope_vit.json`` was written by this file's ``__main__`` against the
name-rules-only scope (before the scope learned model types and timm metadata):

* the role of every tensor of ``vit_base_patch16_224`` (built on the meta device);
* for every built-in selector, the mask of the tiny ViT (with and without LayerScale)
  at ``k=1`` and at a global ``fraction``, as one digest per tensor. The model and
  batches are float64 so the gradient selectors' cut-offs do not move with the CPU.

Regenerate only on purpose: ``PYTHONPATH=$PWD python tests/test_scope_regression.py``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from fps_profile import select
from fps_profile.scope import assign_roles

from conftest import make_batches, make_tiny_vit

GOLDEN = Path(__file__).parent / "data" / "gps_scope_vit.json"
SELECTORS = ("fps", "gps", "magnitude", "random", "snip", "wanda")
BUDGETS = {"k=1": {"k": 1}, "fraction=0.05": {"fraction": 0.05}}
TINY = {"tiny_vit": {}, "tiny_vit_ls": {"init_values": 1e-5}}


def vit_base_roles() -> dict[str, str]:
    import timm

    with torch.device("meta"):
        model = timm.create_model("vit_base_patch16_224", pretrained=False)
    return {n: r.value for n, (r, _, _) in assign_roles(model, "gps").items()}


def digest(mask_tensor: torch.Tensor) -> str:
    bits = mask_tensor.reshape(-1).to(torch.uint8).numpy().tobytes()
    return f"{int(mask_tensor.sum())}:{hashlib.sha256(bits).hexdigest()[:16]}"


def tiny_masks(variant: str, selector: str, budget: str) -> dict[str, str]:
    model = make_tiny_vit(**TINY[variant]).double()
    batches = [(x.double(), y) for x, y in make_batches()]
    mask = select(model, batches, selector, **BUDGETS[budget])
    return {n: digest(m) for n, m in mask.items()}


def compute() -> dict:
    return {
        "vit_base_patch16_224": vit_base_roles(),
        "tiny": {f"{v}/{s}/{b}": tiny_masks(v, s, b) for v in TINY for s in SELECTORS for b in BUDGETS},
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
    for budget in BUDGETS:
        want = golden["tiny"][f"{variant}/{selector}/{budget}"]
        got = tiny_masks(variant, selector, budget)
        assert list(got) == list(want)
        changed = [n for n in want if got[n] != want[n]]
        assert not changed, (budget, changed)


if __name__ == "__main__":
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(compute(), indent=1) + "\n")
    print(f"wrote {GOLDEN}")
