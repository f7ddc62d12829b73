"""The README's code examples run as written (on a tiny ViT instead of ViT-B/16)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

import fps_profile
from fps_profile.selection.selectors import SELECTORS
from numerics import mask_mismatches, sum_rtol

README = Path(__file__).resolve().parent.parent / "README.md"


def _block_after(heading: str) -> str:
    text = README.read_text()
    section = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_plugin_example_runs_and_matches_a_hand_computation(tiny_vit, batches):
    code = _block_after("## Writing a selector")
    scope = {"model": tiny_vit, "batches": batches}
    try:
        exec(compile(code, "README.md", "exec"), scope)
        mask = scope["mask"]
        assert "l2-act" in fps_profile.list_selectors()
        # by hand for one layer: |W| * (mean of x^2 over every token of every image + eps)
        layer = tiny_vit.blocks[0].mlp.fc1
        xs = []
        h = layer.register_forward_pre_hook(lambda m, a: xs.append(a[0].flatten(0, -2)))
        with torch.no_grad():
            for images, _ in batches:
                tiny_vit(images)
        h.remove()
        x = torch.cat(xs).double()
        scores = layer.weight.detach().double().abs() * (x.pow(2).mean(0) + 1e-6)
        # the plugin's float32 statistic: a sum of x.shape[0] same-sign terms, a mean, + eps, x |w|
        tol = sum_rtol(x.shape[0], torch.float32, extra_ops=4)
        assert not mask_mismatches({"w": mask["blocks.0.mlp.fc1.weight"]}, {"w": scores}, k=1, tol=tol)
        assert not mask["patch_embed.proj.weight"].any()  # the Linear-only scope froze the conv
    finally:
        SELECTORS.unregister("l2-act")


def test_python_api_example_runs(tmp_path, monkeypatch):
    code = _block_after("## Python API")
    # the same code on a small timm model and batch, so the test stays fast
    code = code.replace("vit_base_patch16_224", "test_vit").replace("224, 224", "160, 160").replace("(32", "(4")
    code = code.replace("(32,)", "(4,)")
    assert "test_vit" in code and "# ... train ..." in code
    code = code.replace("# ... train ...", "loss = model(batches[0][0]).sum(); loss.backward(); optimizer.step()")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    mask, model = scope["mask"], scope["model"]
    assert (tmp_path / "mask.safetensors").exists()
    agree = scope["mask"].overlap(scope["other"])
    assert 0.0 <= agree.ranked <= 1.0 and agree.whole == 1.0  # one scope: the same whole tensors
    assert str(agree).startswith("ranked entries (") and "whole tensors (" in str(agree)  # what print() shows
    assert [n for n, _ in model.named_parameters()] == list(mask)  # merge_sparse restored the names
