"""Masks as PEFT SHiRA adapters (fps_profile.integrations): the shira:R budget, the conversion
both ways, training, saving, loading and merging under PEFT, and the comparison with
fps-profile's own sparse step. Tests that need ``peft`` skip where it is not installed."""

from __future__ import annotations

import copy
import sys
import json
import warnings

import pytest
from conftest import needs_peft
import torch
from safetensors.torch import save_file
from torch import nn

import fps_profile
from conftest import make_batches, make_tiny_vit
from fps_profile.errors import UserError
from fps_profile.integrations.peft import mask_from_adapter, plan_shira
from fps_profile.integrations.peft_write import write_adapter
from fps_profile.selection.shira import SHIRA_SCOPE, ShiraRank
from fps_profile.selection.mask import Mask
from fps_profile.selection.mask_entry import MaskEntry
from fps_profile.measure.phases import train_step_fn
from fps_profile.selection.sparse import make_sparse_trainable, merge_sparse


# torch warns once per process that PEFT's sparse COO tensors skip invariant checks; PEFT calls a
# transformers method that transformers 5 deprecates.
pytestmark = [pytest.mark.filterwarnings("ignore:Sparse invariant checks:UserWarning"),
              pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")]


def _llama():
    from fps_profile.models.hf import build_lm, token_batches

    torch.manual_seed(0)
    model = build_lm("hf:llama-tiny")
    return model, token_batches(model, 2, 16, 1)


def _vit():
    return make_tiny_vit(), make_batches(1, 6)


MODELS = {"vit": _vit, "llama": _llama}


def _linear_weights(model: nn.Module) -> set[str]:
    return {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


# -- the shira:R budget ----------------------------------------------------------------------

def test_shira_budget_keeps_the_best_r_m_plus_n_entries_of_every_ranked_tensor():
    model = make_tiny_vit()
    mask = fps_profile.select(model, None, "magnitude", budget="shira:2", scope="all-weights")
    assert mask.meta["budget"] == "shira:2"
    ranked = 0
    for name, p in model.named_parameters():
        if p.dim() < 2 or name in ("cls_token", "pos_embed"):
            assert mask.count(name) == 0, name
            continue
        ranked += 1
        rows, cols = p.shape[0], p[0].numel()  # a 4-D kernel as [out, in*kh*kw]
        keep = 2 * (rows + cols)
        # Reference: float64 magnitudes sorted by hand; magnitudes of random weights do not tie.
        order = p.detach().double().abs().reshape(-1).argsort(descending=True)
        expected = torch.zeros(p.numel(), dtype=torch.bool)
        expected[order[:keep]] = True
        assert torch.equal(mask[name].reshape(-1), expected), name
    assert ranked == 10  # patch embedding, 4 Linear weights in each of 2 blocks, the classifier


def test_shira_budget_refuses_bad_r_and_mixing_with_k():
    model = make_tiny_vit()
    for text in ("shira:0", "shira:x", "shira", "shira:-1", "rank:2"):
        with pytest.raises(UserError, match="shira") as exc:
            fps_profile.select(model, None, "magnitude", budget=text)
        _one_line(exc)
    with pytest.raises(UserError, match="exactly one of k, fraction or budget"):
        fps_profile.select(model, None, "magnitude", k=1, budget="shira:1")
    # qkv is 96x32: at most 96*32 // 128 = 24; proj (32x32) allows 16 only.
    with pytest.raises(UserError, match=r"'blocks.0.attn.proj.weight' \(32x32\).*r <= 16") as exc:
        fps_profile.select(model, None, "magnitude", budget="shira:17")
    _one_line(exc)
    assert isinstance(fps_profile.selection.budget.make_budget(budget=ShiraRank(3)), ShiraRank)


# -- what SHiRA can express --------------------------------------------------------------------

def test_plan_of_a_shira_scoped_mask_holds_everything():
    model = make_tiny_vit()
    mask = fps_profile.select(model, None, "magnitude", budget="shira:2", scope=SHIRA_SCOPE)
    plan = plan_shira(model, mask)
    linear = {n.removesuffix(".weight") for n in _linear_weights(model)} - {"head"}
    assert plan.r == 2 and set(plan.targets) == linear and plan.modules_to_save == ("head",)
    assert plan.left_out == () and plan.trainable(model) == mask.stats().trainable


def test_plan_names_what_peft_cannot_express_and_refuses_without_partial():
    model = make_tiny_vit(init_values=0.1)  # with LayerScale
    mask = fps_profile.select(model, None, "magnitude", budget="shira:2")  # scope gps
    with pytest.raises(UserError, match="cannot train 'patch_embed.proj.weight' and 13 more.*partial") as exc:
        plan_shira(model, mask)
    _one_line(exc)
    plan = plan_shira(model, mask, partial=True)
    trainable = {n for n in mask if mask.count(n)}
    held = {f"{t}.weight" for t in plan.targets} | {"head.weight", "head.bias"}
    # Everything trainable but the ranked Linear weights and the classifier: the conv kernel and
    # bias, 8 Linear biases, 4 layer scales.
    assert {n for n, _ in plan.left_out} == trainable - held and len(plan.left_out) == 14
    why = dict(plan.left_out)
    assert "nn.Linear weights only" in why["patch_embed.proj.weight"]
    assert "modules_to_save trains whole modules" in why["blocks.0.attn.qkv.bias"]
    assert "without a .weight" in why["blocks.1.ls2.gamma"]


def test_plan_refuses_counts_that_are_not_one_r_times_m_plus_n():
    model = make_tiny_vit()
    per_row = fps_profile.select(model, None, "magnitude", k=2, scope=SHIRA_SCOPE)
    with pytest.raises(UserError, match=r"96x32\) has 192 trainable.*'shira:R'") as exc:
        plan_shira(model, per_row)
    _one_line(exc)
    # Two layers with r=2 and r=3.
    entries = {n: per_row.entry(n) for n in per_row}
    for name, r in (("blocks.0.attn.qkv.weight", 2), ("blocks.0.attn.proj.weight", 3)):
        shape = tuple(dict(model.named_parameters())[name].shape)
        entries[name] = MaskEntry.from_positions(shape, torch.arange(r * sum(shape)))
    with pytest.raises(UserError, match="one r for all layers; 'blocks.0.attn.qkv.weight' has r=2, "
                                        "'blocks.0.attn.proj.weight' has r=3"):
        plan_shira(model, Mask(entries))
    with pytest.raises(UserError, match="no nn.Linear weight in part; SHiRA"):
        plan_shira(model, Mask({n: MaskEntry.all(p.shape) for n, p in model.named_parameters()}))


def test_gpt2_conv1d_layers_are_not_shira_targets():
    from fps_profile.models.hf import build_lm

    model = build_lm("hf:gpt2-tiny")
    mask = fps_profile.select(model, None, "magnitude", budget="shira:1")
    with pytest.raises(UserError, match=r"no nn.Linear weight in part \('transformer.h.0.attn.c_attn.weight' "
                                        r"is in a Conv1D\); SHiRA adapts nn.Linear layers only") as exc:
        plan_shira(model, mask)
    _one_line(exc)


# -- training through PEFT -----------------------------------------------------------------------

def _peft_steps(model, batch, mask, steps=3, **kw):
    from fps_profile.integrations.peft_step import peft_train_step_fn

    step = peft_train_step_fn(model, *batch, mask, **kw)
    for _ in range(steps):
        step()
    return step


@needs_peft
@pytest.mark.parametrize("family,scope", [("vit", SHIRA_SCOPE), ("llama", "gps"),
                                          ("llama", "gps+lm-head")])  # lm_head in modules_to_save
def test_adamw_steps_under_peft_change_exactly_the_selected_entries(family, scope):
    model, batches = MODELS[family]()
    mask = fps_profile.select(model, batches, "fps", budget="shira:2", scope=scope)
    before = copy.deepcopy(model)
    step = _peft_steps(model, batches[0], mask)
    assert step.trainable == mask.stats().trainable
    base = {n.replace(".base_layer", "").replace(".original_module", ""): p for n, p in step.model.named_parameters()
            if "shira_" not in n and "modules_to_save" not in n}
    for name, p in before.named_parameters():  # PEFT never writes a base weight
        assert torch.equal(base[name], p), name
    merged = step.peft_model.merge_and_unload()
    params = dict(merged.named_parameters())
    assert set(params) == {n for n, _ in before.named_parameters()}
    for name, p in before.named_parameters():
        changed = params[name] != p
        assert torch.equal(changed, mask[name]), f"{name}: {int(changed.sum())} changed, {mask.count(name)} selected"


@needs_peft
def test_adapter_saves_loads_and_merges(tmp_path):
    from peft import PeftModel

    model, batches = _vit()
    mask = fps_profile.select(model, batches, "gps", budget="shira:2", scope=SHIRA_SCOPE)
    fresh = copy.deepcopy(model)
    step = _peft_steps(model, batches[0], mask)
    trained = step.peft_model.eval()
    x = batches[0][0]
    with torch.no_grad():
        out = trained(x)
    trained.save_pretrained(tmp_path)
    assert mask_from_adapter(fresh, tmp_path).overlap(mask).all == 1.0  # read back from a trained adapter
    loaded = PeftModel.from_pretrained(fresh, tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), out)  # the same dense weights in the same kernel
        merged_loaded = loaded.merge_and_unload()
        assert torch.equal(merged_loaded(x), out)  # merging adds the same deltas once, as the forward does
    merged_trained = trained.merge_and_unload()
    for (n, a), (m, b) in zip(merged_loaded.state_dict().items(), merged_trained.state_dict().items(), strict=True):
        assert n == m and torch.equal(a, b), n


@needs_peft
@pytest.mark.parametrize("family", ["vit", "llama"])
def test_merged_peft_model_equals_merge_sparse_given_the_same_updates(family):
    """PEFT trains deltas; fps-profile's sparse step trains the entries in place. Given PEFT's
    trained deltas as the update of the sparse step's ``values`` (one SGD step with lr=1 and the
    negated delta as gradient: values + delta, one rounding, as PEFT's merge W + delta), and the
    trained classifier, ``merge_sparse`` gives PEFT's merged model bit for bit."""
    model, batches = MODELS[family]()
    mask = fps_profile.select(model, batches, "magnitude", budget="shira:2",
                              scope=SHIRA_SCOPE if family == "vit" else "gps")
    sparse_model = copy.deepcopy(model)
    peft_model = _peft_steps(model, batches[0], mask).peft_model

    values = make_sparse_trainable(sparse_model, mask)
    deltas = {n.removeprefix("base_model.model.").removesuffix(".shira_weight.default"): p
              for n, p in peft_model.named_parameters() if ".shira_weight." in n}
    saved = {n.removeprefix("base_model.model.").replace(".modules_to_save.default", ""): p
             for n, p in peft_model.named_parameters() if ".modules_to_save." in n}
    by_id = {id(p): n for n, p in sparse_model.named_parameters() if n in mask}
    with torch.no_grad():
        for mod_name, module in sparse_model.named_modules():
            if hasattr(module, "parametrizations"):
                v = module.parametrizations.weight[0].values
                v.grad = -deltas.pop(mod_name).detach()
        for p in values:
            if id(p) in by_id:  # trained whole: the same tensor
                p.copy_(saved.pop(by_id[id(p)]))
    assert not deltas and not saved
    torch.optim.SGD([v for v in values if v.grad is not None], lr=1.0).step()

    x = batches[0][0]
    with torch.no_grad():
        assert torch.equal(logits(sparse_model(x)), logits(peft_model(x)))
    merged_sparse, merged_peft = merge_sparse(sparse_model), peft_model.merge_and_unload()
    for (n, a), (m, b) in zip(merged_sparse.state_dict().items(), merged_peft.state_dict().items(), strict=True):
        assert n == m and torch.equal(a, b), n


def logits(out):
    return out if isinstance(out, torch.Tensor) else out.logits


def _ulp(x: torch.Tensor) -> torch.Tensor:
    x = x.abs()
    return torch.nextafter(x, torch.full_like(x, float("inf"))) - x


@needs_peft
def test_one_adamw_step_matches_the_sparse_step():
    """Without weight decay (which PEFT applies to its deltas, fps-profile to the entries), one
    step of each from the same weights: the same forward (W + 0 = W), so the same gradients and
    AdamW moments bit for bit. The update u = -lr * m/(sqrt(v)+eps) is then added as W + fl(u)
    by PEFT (delta fl(u) from 0, merged once) and as W + u by the sparse step if addcdiv fuses
    its multiply-add (it may, per CPU kernel). |fl(u) - u| <= ulp(u)/2 and each sum is rounded
    once, so the merged entries differ by at most ulp(u)/2 + ulp(result)."""
    from fps_profile.integrations.peft_step import peft_train_step_fn

    model, batches = _vit()
    mask = fps_profile.select(model, batches, "fps", budget="shira:2", scope=SHIRA_SCOPE)
    twin = copy.deepcopy(model)
    sparse = train_step_fn(twin, *batches[0], mask, weight_decay=0.0)
    peft = peft_train_step_fn(model, *batches[0], mask, weight_decay=0.0)
    sparse(), peft()
    moments = [(sparse.optimizer.state[a]["exp_avg"], peft.optimizer.state[b]["exp_avg"])
               for a, b in zip(sparse.params, peft.params, strict=True)]
    assert all(torch.equal(a, b) for a, b in moments)  # clipped gradients, bit for bit
    deltas = {f"{n}.weight": m.get_delta_weight("default").to_dense()  # PEFT's fl(u), dense
              for n, m in peft.model.named_modules() if hasattr(m, "shira_weight")}
    before = dict(make_tiny_vit().named_parameters())
    a, b = dict(merge_sparse(twin).named_parameters()), dict(peft.peft_model.merge_and_unload().named_parameters())
    for name, p in a.items():
        q = b[name]
        if name in deltas:
            bound = _ulp(deltas[name]) / 2 + _ulp(torch.maximum(p.abs(), q.abs()))
            assert bool(((p - q).abs() <= bound).all()), name
        else:  # the classifier: the same AdamW on the same values; the rest untouched
            assert torch.equal(p, q), name
        assert torch.equal(p != before[name], mask[name]), name


# -- mask -> adapter -> mask ---------------------------------------------------------------------

@needs_peft
@pytest.mark.parametrize("family,selector", [("vit", "fps"), ("vit", "gps"), ("vit", "random"),
                                             ("llama", "wanda"), ("llama", "magnitude")])
def test_round_trip_is_the_identity(tmp_path, family, selector):
    model, batches = MODELS[family]()
    scope = SHIRA_SCOPE if family == "vit" else "gps"
    mask = fps_profile.select(model, batches, selector, budget="shira:2", scope=scope)
    plan = write_adapter(model, mask, tmp_path / "adapter")
    back = mask_from_adapter(model, tmp_path / "adapter")
    assert list(back) == list(mask) and plan.left_out == ()
    for name in mask:
        assert torch.equal(back[name], mask[name]), name
    assert back.meta["selector"] == selector and back.meta["budget"] == "shira:2"


@needs_peft
def test_round_trip_of_a_partial_adapter_keeps_the_ranked_linear_entries(tmp_path):
    model, batches = _vit()
    mask = fps_profile.select(model, batches, "fps", budget="shira:2")  # scope gps: biases, conv too
    plan = write_adapter(model, mask, tmp_path / "a", partial=True)
    back = mask_from_adapter(model, tmp_path / "a")
    left_out = {n for n, _ in plan.left_out}
    assert left_out == {n for n in mask if mask.count(n)} - _linear_weights(model) - {"head.bias"}
    for name in mask:
        expected = torch.zeros_like(mask[name]) if name in left_out else mask[name]
        assert torch.equal(back[name], expected), name
    meta = json.loads((tmp_path / "a" / "fps_profile_mask.json").read_text())
    assert {n for n, _ in meta["left_out"]} == left_out


# -- writing an adapter directory ----------------------------------------------------------------

@needs_peft
def test_written_adapter_loads_as_an_untrained_adapter_and_leaves_the_model_as_found(tmp_path):
    from peft import PeftModel

    model, batches = _vit()
    mask = fps_profile.select(model, batches, "fps", budget="shira:2", scope=SHIRA_SCOPE)
    state = {n: t.clone() for n, t in model.state_dict().items()}
    modules = dict(model.named_modules())
    model.head.weight.requires_grad_(False)
    write_adapter(model, mask, tmp_path / "adapter")
    assert dict(model.named_modules()) == modules and not hasattr(model, "peft_config")
    assert all(torch.equal(t, state[n]) for n,
               t in model.state_dict().items()) and state.keys() == model.state_dict().keys()
    assert [p.requires_grad for p in model.parameters()] == [n != "head.weight" for n, _ in model.named_parameters()]
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "SHIRA" and config["r"] == 2 and config["modules_to_save"] == ["head"]
    x = batches[0][0]
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(PeftModel.from_pretrained(copy.deepcopy(model), tmp_path / "adapter")(x), expected)


@needs_peft
def test_write_adapter_refuses_bad_inputs_and_leaves_nothing_behind(tmp_path):
    model, batches = _vit()
    good = fps_profile.select(model, None, "magnitude", budget="shira:2", scope=SHIRA_SCOPE)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    (tmp_path / "file").write_text("keep")
    cases = [
        (good, tmp_path / "full", "exists and is not an empty directory"),
        (good, tmp_path / "file", "exists and is not an empty directory"),
        (good, tmp_path / "missing" / "a", "does not exist"),
        (fps_profile.select(model, None, "magnitude", budget="shira:2"), tmp_path / "a", "cannot train"),
        (fps_profile.select(model, None, "magnitude", k=1, scope=SHIRA_SCOPE), tmp_path / "a", "shira:R"),
        (Mask({"head.weight": torch.ones(10, 32, dtype=torch.bool)}), tmp_path / "a", "does not match the model"),
    ]
    for mask, out, message in cases:
        with pytest.raises(UserError, match=message) as exc:
            write_adapter(model, mask, out)
        _one_line(exc)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "full"]
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["x"]
    (tmp_path / "empty").mkdir()
    write_adapter(model, good, tmp_path / "empty")  # an empty directory is fine
    assert (tmp_path / "empty" / "adapter_model.safetensors").is_file()


@needs_peft
def test_to_shira_refuses_a_model_with_adapters():
    from fps_profile.integrations.peft import to_shira

    model = make_tiny_vit()
    mask = fps_profile.select(model, None, "magnitude", budget="shira:2", scope=SHIRA_SCOPE)
    peft_model = to_shira(model, mask)
    with pytest.raises(UserError, match="has PEFT adapters already"):
        to_shira(peft_model, mask)
    with pytest.raises(UserError, match="has PEFT adapters already"):
        to_shira(model, mask)  # wrapped in place
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fresh = make_tiny_vit()
        to_shira(fresh, fps_profile.select(fresh, None, "magnitude", budget="shira:2"), partial=True)
    assert any("leaves out 10 tensor(s)" in str(w.message) for w in caught)


# -- reading adapters back: bad inputs -------------------------------------------------------------

def test_mask_from_adapter_refuses_what_is_not_a_fitting_shira_adapter(tmp_path):
    model = make_tiny_vit()
    (tmp_path / "empty").mkdir()
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    save_file({"base_model.model.head.weight": torch.zeros(10, 32)}, str(lora / "adapter_model.safetensors"))

    def shira(name, tensors):
        d = tmp_path / name
        d.mkdir()
        (d / "adapter_config.json").write_text(json.dumps({"peft_type": "SHIRA", "r": 1}))
        save_file(tensors, str(d / "adapter_model.safetensors"))
        return d

    idx = torch.tensor([[0, 1], [0, 1]], dtype=torch.int32)
    cases = [
        (tmp_path / "empty", "not a PEFT adapter directory"),
        (lora, "holds a LORA adapter, not SHiRA"),
        (shira("other", {"base_model.model.model.layers.0.mlp.up_proj.shira_indices": idx}), "which the model lacks"),
        (shira("range", {"base_model.model.head.shira_indices": torch.tensor([[0, 10], [0, 0]], dtype=torch.int32)}),
         "do not fit its 10x32 weight"),
        (shira("twice", {"base_model.model.head.shira_indices": torch.tensor([[1, 1], [3, 3]], dtype=torch.int32)}),
         "repeat a position"),
        (shira("shape", {"base_model.model.head.weight": torch.zeros(3, 3)}), "shapes differently"),
    ]
    for path, message in cases:
        with pytest.raises(UserError, match=message) as exc:
            mask_from_adapter(model, path)
        _one_line(exc)
    corrupt = shira("corrupt", {"base_model.model.head.shira_indices": idx})
    (corrupt / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UserError, match="cannot read"):
        mask_from_adapter(model, corrupt)


def test_without_peft_the_conversion_says_how_to_install_it(monkeypatch):
    from fps_profile.integrations.peft import to_shira

    monkeypatch.setitem(sys.modules, "peft", None)  # import peft now raises ImportError
    model = make_tiny_vit()
    mask = fps_profile.select(model, None, "magnitude", budget="shira:2", scope=SHIRA_SCOPE)
    with pytest.raises(UserError, match=r"needs the 'peft' package \(pip install peft==0.21.2\)"):
        to_shira(model, mask)
