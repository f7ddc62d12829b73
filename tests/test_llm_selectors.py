"""Every selector and the scope on decoder language models (tiny Llama, tiny GPT-2).

References are computed independently of ``fps_profile.selection.selectors``: activation
statistics from forward hooks on a float64 copy of the model (the selectors watch
``F.linear``/``addmm`` calls instead), gradients from the model's own loss with a
plain ``backward()``, per-output-neuron top-K with ``argsort`` along the axis the
layer's output neurons lie on (GPT-2's ``Conv1D`` weight is ``[in, out]``: columns).
"""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers.pytorch_utils import Conv1D  # noqa: E402

from fps_profile import UserError, select  # noqa: E402
from fps_profile.selection.budget import PerRowTopK  # noqa: E402
from fps_profile.models.task import task_loss  # noqa: E402
from fps_profile.selection.mask import Mask  # noqa: E402
from fps_profile.selection.mask_entry import rows_cols  # noqa: E402
from fps_profile.measure.phases import BudgetSpec  # noqa: E402
from fps_profile.selection.scope import Role, assign_roles  # noqa: E402
from fps_profile.selection.scope_report import scope_report  # noqa: E402
from fps_profile.selection.selectors import Target, create  # noqa: E402
from fps_profile.sim.masks import synthetic_mask, trainable_counts  # noqa: E402
from fps_profile.selection.sparse import make_sparse_trainable, merge_sparse  # noqa: E402
from numerics import deep_atol, mask_mismatches, sum_rtol  # noqa: E402

VOCAB, SEQ = 64, 8
SELECTORS = ["fps", "wanda", "gps", "snip", "magnitude", "random"]
LLAMA_PROJ = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
              "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
GPT2_PROJ = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def make_llama(tied: bool = False) -> transformers.LlamaForCausalLM:
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    cfg.use_cache = False
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg)


def make_gpt2() -> transformers.GPT2LMHeadModel:
    # Dropout off: GPS runs in train mode, and its reference must see the same loss.
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    cfg.use_cache = False
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg)


MODELS = {"llama": make_llama, "llama-tied": lambda: make_llama(tied=True), "gpt2": make_gpt2}


def projections(model) -> list[str]:
    """Names of the decoder projection weights, by module names alone."""
    proj = GPT2_PROJ if isinstance(model, transformers.GPT2LMHeadModel) else LLAMA_PROJ
    return [n for n, _ in model.named_parameters() if n.endswith(".weight") and n[:-len(".weight")].endswith(proj)]


def out_axis(model, name: str) -> int:
    return 1 if isinstance(model.get_submodule(name.rpartition(".")[0]), Conv1D) else 0


def token_batches(n: int = 2, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, VOCAB, (2, SEQ), generator=g)
        out.append((ids, ids))
    return out


def ref_topk(scores: torch.Tensor, k: int, axis: int) -> torch.Tensor:
    """The k highest scores of every output neuron (rows, or columns for axis 1), via argsort."""
    rows = scores.t() if axis == 1 else scores
    mask = torch.zeros(rows.shape, dtype=torch.bool)
    mask.scatter_(1, torch.argsort(rows, dim=1, descending=True)[:, :k], True)
    return mask.t() if axis == 1 else mask


def ref_activation_scores(model, batches, kind: str) -> dict[str, torch.Tensor]:
    """|W| x (mean |x| or ||x||_2) per input feature, over every token of every sequence, by hooks:
    the model's own float32 inputs of each layer, summed in float64."""
    ref = copy.deepcopy(model).eval()
    names = projections(model)
    sums, counts, hooks = {}, {}, []
    for name in names:
        def hook(module, inputs, _out, name=name):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            s = x.abs().sum(0) if kind == "fps" else (x * x).sum(0)
            sums[name] = sums.get(name, 0) + s
            counts[name] = counts.get(name, 0) + x.shape[0]
        hooks.append(ref.get_submodule(name.rpartition(".")[0]).register_forward_hook(hook))
    with torch.no_grad():
        for ids, _ in batches:
            ref(input_ids=ids)
    for h in hooks:
        h.remove()
    params = dict(ref.named_parameters())
    out = {}
    for name in names:
        stat = sums[name] / counts[name] if kind == "fps" else sums[name].sqrt()
        w = params[name].detach().double().abs()
        out[name] = w * (stat.unsqueeze(1) if out_axis(model, name) == 1 else stat)
    return out


def selector_scores(model, batches, selector: str, **options) -> dict[str, torch.Tensor]:
    """Scores straight from a selector, for the ranked targets of the gps scope."""
    sel = create(selector, **options)
    params = dict(model.named_parameters())
    targets = [Target(n, params[n], mod, attr) for n, (role, mod, attr) in assign_roles(model, "gps").items()
               if role is Role.RANKED]
    sel.prepare(model, batches, targets)
    try:
        return {t.name: sel.score(t).detach().clone() for t in targets}
    finally:
        sel.release()


def snapshot(model):
    return ([(n, p.detach().clone(), p.requires_grad, p.grad) for n, p in model.named_parameters()],
            [m.training for m in model.modules()])


# ----------------------------------------------------------------------------- every selector, both budgets

@pytest.fixture(scope="module")
def lms():
    return {name: make() for name, make in MODELS.items()}


@pytest.mark.parametrize("budget", [{"k": 1}, {"fraction": 0.01}], ids=["k1", "fraction"])
@pytest.mark.parametrize("model_name", list(MODELS))
def test_every_selector_runs_on_lms(lms, model_name, budget):
    model = lms[model_name]
    batches = token_batches()
    ranked = projections(model)
    params = dict(model.named_parameters())
    total = sum(params[n].numel() for n in ranked)
    before = snapshot(model)
    for selector in SELECTORS:
        mask = select(model, batches, selector, **budget)
        mask.check(model)
        for n, _p in params.items():
            entry = mask.entry(n)
            if n in ranked:
                continue
            # Outside the projections only whole tensors: GPT-2's projection biases trained, the rest frozen.
            bias = n.endswith(".bias") and n[:-len(".bias")] + ".weight" in ranked
            assert entry.index is None and entry.full == bias, (selector, n)
        if "k" in budget:
            for n in ranked:
                per_neuron = mask[n].sum(dim=out_axis(model, n) ^ 1)
                assert per_neuron.eq(1).all(), (selector, n)
        else:
            assert sum(mask.count(n) for n in ranked) == round(0.01 * total), selector
        after = snapshot(model)
        assert [m for m in after[1]] == before[1]
        for (n, a, ra, ga), (_, b, rb, gb) in zip(after[0], before[0]):
            assert torch.equal(a, b) and ra == rb and ga is gb, (selector, n)


# ----------------------------------------------------------------------------- scores against references

@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("kind", ["fps", "wanda"])
def test_activation_scores_equal_hook_reference(lms, model_name, kind):
    model = lms[model_name]
    batches = token_batches()
    got = selector_scores(model, batches, kind)
    want = ref_activation_scores(model, batches, kind)
    assert set(got) == set(want) == set(projections(model))
    # The selector's float32 statistic sums every token's same-sign terms (2 batches x 2 x SEQ), then
    # a division or square root and |w|; the reference sums the same float32 inputs in float64.
    tol = sum_rtol(2 * 2 * SEQ, torch.float32, extra_ops=3)
    for n, w in want.items():
        torch.testing.assert_close(got[n].double(), w, rtol=tol, atol=0, msg=n)
    mask = select(model, batches, kind, k=2)
    for n, w in want.items():  # the decision, away from ties, per output neuron (rows, or columns of a Conv1D)
        t = (lambda x: x.t()) if out_axis(model, n) == 1 else (lambda x: x)
        assert not mask_mismatches({n: t(mask[n])}, {n: t(w)}, k=2, tol=tol), n


def ref_grads(model, batches) -> dict[str, torch.Tensor]:
    """Signed gradients of the model's own next-token loss, summed over batches, in train mode."""
    ref = copy.deepcopy(model).train()
    for ids, labels in batches:
        ref(input_ids=ids, labels=labels).loss.backward()
    return {n: p.grad for n, p in ref.named_parameters()}


@pytest.mark.parametrize("model_name", list(MODELS))
def test_gps_and_snip_equal_grad_of_the_lm_loss(lms, model_name):
    # In float64: the selectors' gradients and the reference's add the same terms, maybe in another order.
    model = copy.deepcopy(lms[model_name]).double()
    batches = token_batches()
    grads = ref_grads(model, batches)
    first = ref_grads(model, batches[:1])
    params = dict(model.named_parameters())
    auto = selector_scores(model, batches, "gps")
    explicit = selector_scores(model, batches, "gps", loss="lm")
    snip = selector_scores(model, batches, "snip")
    assert set(auto) == set(projections(model))
    for n in auto:  # 2 blocks forward and backward (~40 stages), sums of at most 2 x 2 x SEQ tokens or 128 features
        torch.testing.assert_close(auto[n], grads[n].abs(), rtol=0, atol=deep_atol(grads[n].abs().max().item(), 128,
                                                                                   40),
                                   msg=n)
        assert torch.equal(auto[n], explicit[n]), n  # the same loss by another name: the same computation
        want = (first[n] * params[n].detach()).abs()
        torch.testing.assert_close(snip[n], want, rtol=0, atol=deep_atol(want.max().item(), 128, 40), msg=n)


def test_gps_loss_errors(lms):
    batches = token_batches(1)
    with pytest.raises(UserError, match=r"loss='supcon' does not apply to a language model \(SupCon needs class "
                                        r"labels\); use loss='lm'"):
        select(lms["llama"], batches, "gps", k=1, loss="supcon")
    with pytest.raises(UserError, match="loss='ce' does not apply to a language model"):
        select(lms["gpt2"], batches, "gps", k=1, loss="ce")
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 3))
    with pytest.raises(UserError, match="loss='lm' needs a causal language model, not Sequential"):
        select(mlp, [(torch.randn(2, 4), torch.tensor([0, 1]))], "gps", k=1, loss="lm", scope="all-weights")


# ----------------------------------------------------------------------------- the scope

def test_llm_scope_roles(lms):
    for name, model in lms.items():
        roles = {n: r for n, (r, _, _) in assign_roles(model, "gps").items()}
        assert sorted(n for n, r in roles.items() if r is Role.RANKED) == sorted(projections(model)), name
        emb = model.get_input_embeddings().weight
        names = {id(p): n for n, p in model.named_parameters()}
        head = model.get_output_embeddings().weight
        assert roles[names[id(emb)]] is Role.FROZEN and roles[names[id(head)]] is Role.FROZEN
        assert all(r is Role.FROZEN for n, r in roles.items() if "norm" in n or ".ln_" in n or "wpe" in n)
        plus = {n: r for n, (r, _, _) in assign_roles(model, "gps+lm-head").items()}
        assert [n for n in plus if plus[n] != roles[n]] == [names[id(head)]]
        assert plus[names[id(head)]] is Role.TRAINABLE
    tied = lms["llama-tied"]
    assert "lm_head.weight" not in dict(tied.named_parameters())
    report = scope_report(tied, "gps+lm-head")
    assert report.tensors["model.embed_tokens.weight"] == "trainable"
    assert "lm_head (tied to the token embedding)" in report.format()
    assert report.classifier["source"] == "causal-lm"
    untied = scope_report(lms["llama"], "gps")
    assert untied.tensors["lm_head.weight"] == untied.tensors["model.embed_tokens.weight"] == "frozen"
    attn = assign_roles(lms["llama"], "attention")
    assert sorted(n for n, (r, _, _) in attn.items() if r is Role.RANKED) == sorted(
        n for n in projections(lms["llama"]) if ".self_attn." in n)


# ----------------------------------------------------------------------------- Conv1D budgets and sparse training

def test_per_row_topk_on_a_transposed_weight():
    g = torch.Generator().manual_seed(3)
    scores = torch.rand(5, 7, generator=g)  # [in, out]
    for k in (1, 2, 5):
        entry = PerRowTopK(k).row_entry("w", scores, out_axis=1)
        assert torch.equal(entry.dense(), ref_topk(scores, k, 1))
    assert rows_cols((5, 7), 1) == (7, 5)
    with pytest.raises(UserError, match="k=6 is larger than a row of 'w' \\(5 entries\\)"):
        PerRowTopK(6).row_entry("w", scores, out_axis=1)


def test_sim_counts_follow_conv1d_columns(lms):
    model = lms["gpt2"]
    real = select(model, None, "magnitude", k=2)
    counts = trainable_counts(model, BudgetSpec(k=2), "gps")
    assert counts == {n: real.count(n) for n in counts}
    synth = synthetic_mask(model, BudgetSpec(k=2), "gps")
    for n in projections(model):
        assert synth[n].sum(dim=0).eq(2).all(), n


def test_sparse_step_on_gpt2_changes_only_selected_columns(lms, tmp_path):
    base = lms["gpt2"]
    batches = token_batches(1)
    mask = select(base, batches, "fps", k=1)
    mask.save(tmp_path / "gpt2.safetensors")
    loaded = Mask.load(tmp_path / "gpt2.safetensors")
    assert all(torch.equal(loaded[n], mask[n]) for n in mask)
    model = copy.deepcopy(base).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(make_sparse_trainable(model, loaded), lr=1e-2, weight_decay=0.1)
    ids, labels = batches[0]
    task_loss(model, ids, labels).backward()
    opt.step()
    merge_sparse(model)
    after = dict(model.named_parameters())
    for n in projections(base):
        changed = after[n].detach() != before[n]
        sel = mask[n]
        assert not (changed & ~sel).any(), n  # frozen entries bit-identical
        assert changed[sel].float().mean() > 0.9, n  # the selected ones moved
        assert sel.sum(dim=0).eq(1).all(), n  # one input per output neuron (column)
    assert torch.equal(after["transformer.wte.weight"].detach(), before["transformer.wte.weight"])


@pytest.mark.parametrize("model_name", ["llama", "gpt2"])
def test_fps_peak_is_the_inference_floor_whatever_the_sequence_length(model_name):
    """FPS on a whole language model peaks at its no_grad forward plus at most its mask and
    statistics, the same excess at every sequence length (the layer-level check is below)."""
    from fps_profile.trackers.tensor import LiveTensorBytes

    model = MODELS[model_name]().eval()
    stats = sum(4 * p.shape[1 - out_axis(model, n)] for n, p in model.named_parameters() if n in projections(model))
    excess = []
    for seq in (SEQ, 8 * SEQ):
        ids = torch.randint(0, VOCAB, (2, seq), generator=torch.Generator().manual_seed(seq))
        with LiveTensorBytes("cpu") as tracker:
            base = tracker.current
            tracker.reset_peak()
            with torch.no_grad():
                del model(ids).logits
            floor = tracker.peak - base
            tracker.reset_peak()
            mask = select(model, [(ids, ids)], "fps", k=1)
            peak = tracker.peak - base
        assert floor < peak <= floor + mask.nbytes + stats, seq
        excess.append(peak - floor)
    assert excess[0] == excess[1]


@pytest.mark.parametrize("kind", ["fps", "wanda"])
def test_conv1d_statistics_copy_no_activation(kind):
    """On one Conv1D layer, FPS/Wanda add to the no_grad forward only the statistic, one
    weight-sized score tensor and the mask (an ``x.abs()`` copy of the input would add 256 KiB)."""
    from fps_profile.trackers.tensor import LiveTensorBytes

    torch.manual_seed(0)
    layer = torch.nn.Sequential(Conv1D(8, 256))
    x = torch.randn(256, 256)
    with LiveTensorBytes("cpu") as tracker:
        base = tracker.current
        tracker.reset_peak()
        with torch.no_grad():
            out = layer(x)
            del out
        floor = tracker.peak - base
        tracker.reset_peak()
        mask = select(layer, [x], kind, k=1)
        peak = tracker.peak - base
    assert mask["0.weight"].sum(dim=0).eq(1).all()
    assert floor < peak <= floor + layer[0].weight.nbytes + mask.nbytes + 4 * 256
