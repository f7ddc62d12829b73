"""Weights files and timm's pretrained weights: exact loads, provenance, the classifier re-init,
and one-line refusals (arbitrary-code pickles never run, corrupt files, keys that do not fit)."""

from __future__ import annotations

import hashlib
import pickle
import socket

import pytest
import torch
from conftest import IMG, make_batches, make_tiny_vit
from safetensors.torch import save_file, save_model
from timm.models.vision_transformer import VisionTransformer

import fps_profile
from fps_profile.errors import UserError
from fps_profile.models.pretrained import create_pretrained, pretrained_source
from fps_profile.models.weights import WeightsInfo, check_weights_spec, load_weights_file, read_state_dict

HUB_ID = "timm/test_vit.r160_in1k"


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and text.strip() == text and text
    return text


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _save(state, path):
    if str(path).endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return str(path)


def _sha(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _vit(num_classes: int, seed: int = 1, img_size: int = IMG):
    torch.manual_seed(seed)
    return VisionTransformer(img_size=img_size, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                             num_classes=num_classes)


class Evil:
    """Unpickling it would write a file: the proof that it ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth", ".bin"])
def test_a_weights_file_loads_exactly_with_its_hash(tmp_path, suffix):
    source, model = make_tiny_vit(seed=1), make_tiny_vit(seed=0)
    path = _save(source.state_dict(), tmp_path / f"w{suffix}")
    info = load_weights_file(model, path)
    assert info == WeightsInfo(str(tmp_path / f"w{suffix}"), _sha(path), (), str(tmp_path / f"w{suffix}"))
    expected = source.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
    assert info.fields() == {"weights_source": info.source, "weights_sha256": _sha(path), "weights_reinitialized": []}


def test_fps_mask_after_loading_is_the_source_models_not_the_random_inits(tmp_path):
    batches = make_batches(num_batches=2, batch_size=6)
    source, model = make_tiny_vit(seed=1), make_tiny_vit(seed=0)
    at_init = fps_profile.select(model, batches, "fps", k=2)
    reference = fps_profile.select(source, batches, "fps", k=2)
    load_weights_file(model, _save(source.state_dict(), tmp_path / "w.safetensors"))
    loaded = fps_profile.select(model, batches, "fps", k=2)
    assert all(torch.equal(loaded[n], reference[n]) for n in reference)  # the same weights rank the same
    assert any(not torch.equal(loaded[n], at_init[n]) for n in at_init)


def test_a_classifier_of_another_size_keeps_its_init_and_is_reported(tmp_path):
    source = _vit(num_classes=7)  # e.g. a checkpoint fine-tuned on another task
    model = make_tiny_vit(seed=0)  # 10 classes
    before = _state(model)
    info = load_weights_file(model, _save(source.state_dict(), tmp_path / "w.pt"))
    assert info.reinitialized == ("head.weight", "head.bias")
    got, expected = model.state_dict(), source.state_dict()
    for k, v in got.items():
        assert torch.equal(v, before[k] if k.startswith("head.") else expected[k]), k


def test_a_file_loads_into_a_model_of_another_dtype(tmp_path):
    source = make_tiny_vit(seed=1)
    model = make_tiny_vit(seed=0).to(torch.bfloat16)
    load_weights_file(model, _save(source.state_dict(), tmp_path / "w.safetensors"))
    expected = source.state_dict()
    # the copy rounds each float32 value to bfloat16 once, as .to(bfloat16) does
    assert all(torch.equal(v, expected[k].to(torch.bfloat16)) for k, v in model.state_dict().items())


def test_training_checkpoints_and_wrapper_prefixes_are_unwrapped(tmp_path):
    source, expected = make_tiny_vit(seed=1), make_tiny_vit(seed=1).state_dict()
    checkpoint = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}
    model = make_tiny_vit(seed=0)
    load_weights_file(model, _save(checkpoint, tmp_path / "ckpt.pth"))
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
    compiled = {f"_orig_mod.{k}": v for k, v in source.state_dict().items()}
    model = make_tiny_vit(seed=0)
    load_weights_file(model, _save(compiled, tmp_path / "compiled.safetensors"))
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


def test_tied_weights_saved_once_still_fit(tmp_path):
    from fps_profile.models import create_model

    torch.manual_seed(1)
    source = create_model("hf:gpt2-tiny")
    path = tmp_path / "gpt2.safetensors"
    save_model(source, str(path))  # keeps one name of the tied lm_head / token embedding
    saved, _ = read_state_dict(path)
    assert len(saved) == len(source.state_dict()) - 1  # precondition: one of the tied pair is absent
    torch.manual_seed(0)
    model = create_model("hf:gpt2-tiny")
    assert load_weights_file(model, path).reinitialized == ()
    expected = source.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


def test_a_meta_model_is_checked_with_the_same_provenance(tmp_path):
    from fps_profile.models import create_model

    torch.manual_seed(1)
    gpt2 = tmp_path / "gpt2.safetensors"
    save_model(create_model("hf:gpt2-tiny"), str(gpt2))  # tied pair saved once
    vit = _save(_vit(num_classes=7).state_dict(), tmp_path / "vit.pt")
    from fps_profile.models.hf import build_lm

    with torch.device("meta"):  # as the sim builds models (fps_profile.sim.fake.build_model)
        meta_lm = build_lm("hf:gpt2-tiny")
        meta_vit = _vit(num_classes=10)
    assert load_weights_file(meta_lm, gpt2).reinitialized == ()
    assert load_weights_file(meta_vit, vit) == load_weights_file(make_tiny_vit(), vit)  # head re-init reported
    assert all(p.device.type == "meta" for p in [*meta_lm.parameters(), *meta_vit.parameters()])
    with pytest.raises(UserError) as exc:
        load_weights_file(meta_vit, _save({"x": torch.zeros(1)}, tmp_path / "x.pt"))
    assert "missing" in one_line(exc) and "1 unexpected (x)" in str(exc.value)


def _unchanged(model, before):
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_keys_that_do_not_fit_are_listed_in_one_line_and_nothing_is_loaded(tmp_path):
    state = make_tiny_vit(seed=1).state_dict()
    model = make_tiny_vit(seed=0)
    before = _state(model)
    dropped = list(state)[:5]
    partial = {k: v for k, v in state.items() if k not in dropped}
    with pytest.raises(UserError) as exc:
        load_weights_file(model, _save(partial, tmp_path / "partial.pt"))
    assert f"5 missing ({dropped[0]}, {dropped[1]}, {dropped[2]}, ... 2 more)" in one_line(exc)
    extra = {**state, "extra.a": torch.zeros(1), "extra.b": torch.zeros(1)}
    with pytest.raises(UserError) as exc:
        load_weights_file(model, _save(extra, tmp_path / "extra.safetensors"))
    assert "2 unexpected (extra.a, extra.b)" in one_line(exc) and "missing" not in str(exc.value)
    other = _vit(num_classes=10, img_size=48).state_dict()  # 36 patches: another pos_embed
    with pytest.raises(UserError) as exc:
        load_weights_file(model, _save(other, tmp_path / "other.pt"))
    assert "1 tensor(s) of another shape (file vs model): pos_embed [1, 37, 32] vs [1, 17, 32]" in one_line(exc)
    assert _unchanged(model, before)


@pytest.mark.parametrize("how", ["zip", "legacy", "raw-pickle-2", "raw-pickle-5"])
def test_a_pickle_that_would_run_code_is_refused_and_never_run(tmp_path, how):
    marker = tmp_path / "it-ran"
    payload = {"weight": torch.zeros(2), "x": Evil(marker)}
    path = tmp_path / "evil.bin"
    if how.startswith("raw-pickle"):  # no tensor: a raw pickle's tensor would be refused first (its own global)
        with open(path, "wb") as f:
            pickle.dump({"x": Evil(marker)}, f, protocol=int(how[-1]))
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=how == "zip")
    model = make_tiny_vit()
    before = _state(model)
    with pytest.raises(UserError) as exc:
        load_weights_file(model, path)
    text = one_line(exc)
    assert "refused" in text
    if how != "raw-pickle-5":  # protocol 5's framing is refused before the global is read
        assert "would call exec (arbitrary code)" in text
    assert not marker.exists() and _unchanged(model, before)


def test_corrupt_and_wrong_files_fail_in_one_line(tmp_path):
    good = tmp_path / "good.pt"
    torch.save(make_tiny_vit().state_dict(), good)
    data = good.read_bytes()
    cases = {
        # seeded noise: torch's weights-only unpickler rejects it (or trips over it: then "cannot be read")
        "random.pt": (bytes(torch.randint(0, 256, (400,), generator=torch.Generator().manual_seed(0)).tolist()),
                      "refused: not a torch.save file"),
        "truncated.pt": (data[: len(data) // 2], "cannot be read (corrupt?)"),
        "junk.safetensors": ((16).to_bytes(8, "little") + b"{not json at all", "not a valid safetensors file"),
    }
    safe = tmp_path / "good.safetensors"
    save_file({"w": torch.zeros(3)}, str(safe))
    cases["truncated.safetensors"] = (safe.read_bytes()[:-4], "not a valid safetensors file")
    for name, (content, expected) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(UserError) as exc:
            read_state_dict(tmp_path / name)
        assert expected in one_line(exc), name
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    torch.save({"epoch": 1, "lr": 0.1}, tmp_path / "meta.pt")
    for name, expected in [("list.pt", "hold a list, not a state dict"),
                           ("meta.pt", "hold a dict with keys 'epoch', 'lr', not a state dict")]:
        with pytest.raises(UserError) as exc:
            read_state_dict(tmp_path / name)
        assert expected in one_line(exc)


def test_bad_weights_specs_fail_in_one_line(tmp_path):
    (tmp_path / "w.ckpt").write_bytes(b"x")
    for spec, expected in [(str(tmp_path / "missing.pt"), "no such file"),
                           (str(tmp_path / "w.ckpt"), "unknown format '.ckpt'"), (str(tmp_path), "no such file")]:
        with pytest.raises(UserError) as exc:
            check_weights_spec(spec)
        assert expected in one_line(exc)
    check_weights_spec("pretrained")


def _fake_hub_cache(root, state, filename="model.safetensors"):
    """The Hugging Face cache layout hf_hub_download leaves: refs/main -> snapshots/<commit>/<file>."""
    repo = root / f"models--{HUB_ID.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    return _save(state, repo / "snapshots" / commit / filename)


def test_pretrained_weights_load_through_timm_from_the_cache(tmp_path):
    import timm

    torch.manual_seed(3)
    source = timm.create_model("test_vit")
    path = _fake_hub_cache(tmp_path, source.state_dict())
    model, info = create_pretrained("test_vit", num_classes=10, cache_dir=tmp_path)
    assert (info.source, info.sha256, info.file) == (HUB_ID, _sha(path), path)
    assert info.reinitialized == ("head.weight", "head.bias")  # timm dropped the 1000-class head
    expected = source.state_dict()
    got = model.state_dict()
    assert got["head.weight"].shape == (10, expected["head.weight"].shape[1])
    assert all(torch.equal(v, expected[k]) for k, v in got.items() if not k.startswith("head."))
    model, info = create_pretrained("test_vit", cache_dir=tmp_path)  # its own 1000 classes: nothing re-initialised
    assert info.reinitialized == ()
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


def test_pretrained_offline_fails_at_once_saying_where_it_looked(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError) as exc:
        create_pretrained("test_vit", num_classes=10, cache_dir=tmp_path)
    text = one_line(exc)
    assert f"hub id '{HUB_ID}'" in text and f"cache dir {tmp_path}" in text and "offline" in text

    def no_dns(host, *args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(UserError) as exc:
        create_pretrained("test_vit", cache_dir=tmp_path)
    assert f"hub id '{HUB_ID}'" in one_line(exc) and "cannot reach huggingface.co" in str(exc.value)


def test_pretrained_for_what_timm_has_no_weights_for_fails_in_one_line(tmp_path):
    cases = {"test_vit4": "timm has no pretrained weights for 'test_vit4'",
             "test_vit.nosuchtag": "Invalid pretrained tag",
             "hf:gpt2-tiny": "applies to timm model names", "net.py:make": "applies to timm model names",
             "resnt18": "did you mean 'resnet18'"}
    for name, expected in cases.items():
        with pytest.raises(UserError) as exc:
            pretrained_source(name, tmp_path)
        assert expected in one_line(exc), name
