"""The user's own model (``package.module:factory``, ``file.py:factory``): names, errors, the
input-size rule, and the measured phases on cpu and on the sim.

Every model here comes from a module written to ``tmp_path`` by the test.
"""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from fps_profile.measure import phases
from fps_profile.errors import UserError
from fps_profile.selection.mask import Mask
from fps_profile.models import input_size, synthetic_batches
from fps_profile.models.factory import (build_factory_model, check_factory_name, is_factory_name,
                                        parse_factory_name, resolve_input_size)
from fps_profile.rows.cell import Cell
from fps_profile.measure.backends import backend_for
from fps_profile.sim import Simulator
from fps_profile.sim.backend import SimPhaseHooks
from fps_profile.trackers import LiveTensorBytes

USER_MODULE = '''
import torch
from torch import nn

from helper import WIDTH   # a neighbour of this file: its folder is on sys.path while it loads


class Net(nn.Module):
    """conv, BatchNorm, ReLU, strided conv, global pool, linear, classifier ``head``."""

    def __init__(self, num_classes=10, image_size=16, in_chans=3):
        super().__init__()
        self.input_size = (in_chans, image_size, image_size)
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_chans, WIDTH, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(WIDTH)
        self.conv2 = nn.Conv2d(WIDTH, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 16)
        self.head = nn.Linear(16, num_classes)

    def get_classifier(self):
        return self.head

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x)).mean((2, 3))
        return self.head(torch.relu(self.fc(x)))


def make(num_classes=10, image_size=16):
    return Net(num_classes, image_size)


def grey(num_classes=10):
    return Net(num_classes, 12, in_chans=1)


def undeclared(num_classes=10):
    model = Net(num_classes)
    del model.input_size
    return model


def wide():   # a non-square declared size
    model = Net()
    model.input_size = (3, 12, 20)
    return model


def forwards(**kwargs):   # a catch-all is handed none of the offered keywords
    assert not kwargs, kwargs
    return Net()


def lazy():   # imports its neighbour only when called
    import helper
    return Net(helper.WIDTH)


def timm_vit(num_classes=1000, img_size=None):
    import timm
    return timm.create_model("test_vit", num_classes=num_classes, **({"img_size": img_size} if img_size else {}))


def timm_fixed():   # no num_classes keyword: the model's reset_classifier applies
    import timm
    return timm.create_model("test_vit")


def fixed_classes():   # a num_classes attribute, no keyword, no reset_classifier
    return Net(7)


def not_a_module():
    return 42


def raises():
    raise ValueError("bad width\\nsecond line of the message")


class Factories:
    @staticmethod
    def create(num_classes=10):
        return Net(num_classes)


CONSTANT = 3
'''

# make(num_classes=5): conv1 [8, 3*3*3], conv2 [16, 8*3*3], fc [16, 16] ranked (k=1: one entry per output
# row); conv biases and fc bias trained whole, the classifier (head, 5x16 + 5) whole; bn1 frozen.
K1_TRAINABLE = (8 + 16 + 16) + (8 + 16 + 16) + (5 * 16 + 5)


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and text.strip() == text and text
    return text


@pytest.fixture
def user_file(tmp_path):
    folder = tmp_path / "mymodels"
    folder.mkdir()
    (folder / "helper.py").write_text("WIDTH = 8\n")
    path = folder / "usernet.py"
    path.write_text(textwrap.dedent(USER_MODULE))
    yield str(path)
    sys.modules.pop("helper", None)


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    """A package ``fpsp_userpkg`` in the current directory (not otherwise on sys.path)."""
    pkg = tmp_path / "fpsp_userpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text("from torch import nn\n\n"
                                 "def tiny(num_classes=3):\n"
                                 "    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, num_classes))\n"
                                 "    model.input_size = (2, 4, 4)\n"
                                 "    return model\n\n"
                                 "def broken():\n    return None\n")
    (pkg / "bad_import.py").write_text("import fpsp_no_such_dependency\n")
    monkeypatch.chdir(tmp_path)
    yield "fpsp_userpkg"
    for name in [n for n in sys.modules if n.startswith("fpsp_userpkg")]:
        del sys.modules[name]


@pytest.mark.parametrize("name,expected", [
    ("resnet18", None), ("vit_base_patch16_224.augreg_in21k", None), ("hf:llama-tiny", None),
    ("hf:configs/x.json", None), ("hf-hub:timm/resnet18.a1_in1k", None), ("local-dir:/models/x", None),
    ("pkg.mod:make", ("pkg.mod", "make", False)), ("mod:Class.create", ("mod", "Class.create", False)),
    ("models/net.py:make", ("models/net.py", "make", True)), ("net.py:make", ("net.py", "make", True)),
    ("/abs/dir/net:make", ("/abs/dir/net", "make", True)),
    ("pkg.mod:", None), (":make", None), ("pkg.mod:not-an-identifier", None), ("pkg-x:make", None),
])
def test_factory_names_are_told_apart_from_timm_and_hf_names(name, expected):
    spec = parse_factory_name(name)
    assert (spec and (spec.target, spec.attr, spec.is_file)) == (expected or None)
    assert is_factory_name(name) is (expected is not None)


def test_a_file_factory_builds_with_the_keywords_it_names(user_file):
    model = build_factory_model(f"{user_file}:make", num_classes=5)
    assert model.head.out_features == 5 and model.num_classes == 5
    assert model.pretrained_cfg["input_size"] == (3, 16, 16)  # from the module's input_size attribute
    assert input_size(model) == (3, 16, 16)  # what synthetic_batches and the sim's batches use
    model = build_factory_model(f"{user_file}:make", num_classes=5, image_size=24)
    assert model.input_size == (3, 24, 24) and input_size(model) == (3, 24, 24)  # image_size was passed
    assert build_factory_model(f"{user_file}:Factories.create", num_classes=4).head.out_features == 4
    assert build_factory_model(f"{user_file}:lazy").conv1.out_channels == 8  # its neighbour imported at call time


def test_a_catch_all_factory_gets_no_offered_keyword(user_file):
    # forwards() asserts it received nothing; the classifier size is then the model's own
    model = build_factory_model(f"{user_file}:forwards", image_size=16)
    assert model.head.out_features == 10


def test_a_module_factory_is_imported_from_the_current_directory(user_package):
    model = build_factory_model(f"{user_package}.nets:tiny", num_classes=6)
    assert model[1].out_features == 6 and input_size(model) == (2, 4, 4)
    assert callable(check_factory_name(f"{user_package}.nets:tiny"))


def test_num_classes_without_the_keyword(user_file):
    model = build_factory_model(f"{user_file}:timm_fixed", num_classes=7)  # timm's reset_classifier
    assert model.head.out_features == 7 and model.num_classes == 7
    with pytest.raises(UserError) as exc:
        build_factory_model(f"{user_file}:fixed_classes", num_classes=5)
    assert "builds 7 classes, 5 are needed" in one_line(exc)
    assert build_factory_model(f"{user_file}:fixed_classes", num_classes=7).head.out_features == 7


def test_the_input_size_rule(user_file):
    name = f"{user_file}:undeclared"
    with pytest.raises(UserError) as exc:
        build_factory_model(name)
    assert "cannot tell what input" in one_line(exc) and "--image-size" in str(exc.value)
    # image_size alone: channels from the first convolution
    assert input_size(build_factory_model(name, image_size=20)) == (3, 20, 20)
    assert input_size(build_factory_model(f"{user_file}:grey", image_size=20)) == (1, 20, 20)
    # an explicit input size wins over the attribute; image_size then replaces height and width
    assert input_size(build_factory_model(f"{user_file}:make", input_size=(3, 8, 8))) == (3, 8, 8)
    assert input_size(build_factory_model(f"{user_file}:grey")) == (1, 12, 12)
    assert input_size(build_factory_model(f"{user_file}:wide")) == (3, 12, 20)
    # a timm model: its pretrained_cfg, and the factory's img_size keyword with image_size
    vit = build_factory_model(f"{user_file}:timm_vit", num_classes=3)
    assert input_size(vit) == (3, 160, 160) and vit.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)  # cfg kept
    vit = build_factory_model(f"{user_file}:timm_vit", num_classes=3, image_size=64)
    assert input_size(vit) == (3, 64, 64) and vit.patch_embed.img_size == (64, 64)
    for bad in [(3, 8), (3, 0, 8), (3.0, 8, 8), "3x8x8"]:
        with pytest.raises(UserError) as exc:
            resolve_input_size(torch.nn.Linear(2, 2), input_size=bad)
        one_line(exc)
    lstm = torch.nn.LSTM(4, 4)  # an int input_size attribute is not an image size
    with pytest.raises(UserError):
        resolve_input_size(lstm)


@pytest.mark.parametrize("suffix,source,expected", [
    ("nope.py:make", None, "file '{dir}/nope.py' does not exist"),
    ("notpython.txt:make", "x = 1\n", "is not a Python file"),
    ("syntax.py:make", "def make(:\n", "loading '{dir}/syntax.py' failed: SyntaxError"),
    ("boom.py:make", "raise RuntimeError('boom at import\\nsecond line')\n",
     "loading '{dir}/boom.py' failed: RuntimeError: boom at import"),
    ("exits.py:make", "import sys\nsys.exit(3)\n", "failed: SystemExit: 3"),
    ("usernet.py:mak", None, "has no attribute 'mak'; did you mean 'make'?"),
    ("usernet.py:Factories.nope", None, "has no attribute 'nope'"),
    ("usernet.py:CONSTANT", None, "usernet.py:CONSTANT is a int, not a callable returning a model"),
    ("usernet.py:not_a_module", None, "the factory returned a int, not a torch.nn.Module"),
    ("usernet.py:raises", None, "the factory raised ValueError: bad width"),
])
def test_every_bad_file_factory_fails_in_one_line(user_file, suffix, source, expected):
    folder = user_file.rsplit("/", 1)[0]
    if source is not None:
        with open(f"{folder}/{suffix.split(':')[0]}", "w") as f:
            f.write(source)
    with pytest.raises(UserError) as exc:
        build_factory_model(f"{folder}/{suffix}")
    assert expected.format(dir=folder) in one_line(exc)


def test_every_bad_module_factory_fails_in_one_line(user_package):
    cases = {
        "fpsp_no_such_pkg.nets:tiny": "module 'fpsp_no_such_pkg.nets' is not importable",
        f"{user_package}.missing:tiny": f"module '{user_package}.missing' is not importable",
        f"{user_package}.bad_import:f": "importing 'fpsp_userpkg.bad_import' failed: ModuleNotFoundError",
        f"{user_package}.nets:broken": "the factory returned a NoneType",
        "resnet18": "is not a model factory",
    }
    for name, expected in cases.items():
        with pytest.raises(UserError) as exc:
            build_factory_model(name)
        assert expected in one_line(exc), name


def test_a_failed_load_leaves_no_module_behind(user_file):
    folder = user_file.rsplit("/", 1)[0]
    with open(f"{folder}/boom.py", "w") as f:
        f.write("raise RuntimeError('boom')\n")
    before = set(sys.modules)
    with pytest.raises(UserError):
        check_factory_name(f"{folder}/boom.py:make")
    assert set(sys.modules) == before and folder not in sys.path


def _cpu_model(user_file):
    torch.manual_seed(0)
    model = build_factory_model(f"{user_file}:make", num_classes=5)
    return model, synthetic_batches(model, 4, 2, seed=0)


@pytest.mark.parametrize("phase,selector,options", [
    ("select", "fps", ()), ("select", "gps", (("loss", "ce"),)), ("inference", None, ()),
    ("train_step", "fps", ()), ("train_step", None, ()), ("train_floor", None, ())])
def test_a_user_model_runs_every_phase_on_cpu(user_file, phase, selector, options):
    model, batches = _cpu_model(user_file)
    assert batches[0][0].shape == (4, 3, 16, 16) and int(batches[0][1].max()) < 5
    cell = Cell(model=f"{user_file}:make", batch_size=4, phase=phase, selector=selector, options=options)
    prepared = phases.prepare(cell, model, batches, backend_for("cpu"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = prepared.fn()
    if phase == "select":
        assert isinstance(out, Mask)
        assert out.stats().trainable == K1_TRAINABLE
        for name in ("conv1.weight", "conv2.weight", "fc.weight"):  # one entry per output row
            rows = out[name].reshape(out[name].shape[0], -1)
            assert rows.sum(1).tolist() == [1] * rows.shape[0]
        assert out["head.weight"].all() and not out["bn1.weight"].any()
    elif phase == "inference":
        assert out.shape == (4, 5) and torch.isfinite(out).all()
    else:
        assert torch.isfinite(out)
        expected = K1_TRAINABLE if selector else sum(p.numel() for p in model.parameters())
        if phase == "train_step":
            assert prepared.params_trainable == expected
            changed = sum(int((p.detach() != before[n]).sum()) for n, p in model.named_parameters()
                          if n in before and p.shape == before[n].shape)
            # AdamW's first step moves every trainable entry (update lr*sign(g) plus decay) and no other
            assert changed == expected


def test_gps_contrastive_loss_asks_a_user_model_for_timm_hooks(user_file):
    # GPS's default (supervised contrastive) loss reads pre-logits features through timm's
    # forward_features/forward_head; a plain module says so in one line (loss='ce' works, above)
    model, batches = _cpu_model(user_file)
    cell = Cell(model=f"{user_file}:make", batch_size=4, phase="select", selector="gps")
    with pytest.raises(UserError) as exc:
        phases.prepare(cell, model, batches, backend_for("cpu")).fn()
    assert "forward_features/forward_head" in one_line(exc)


def _real_peak(fn, model, batches, warmup: int) -> int:
    """Peak live bytes of ``fn()`` on the cpu, counting the model, the batches and any optimizer state."""
    for _ in range(warmup):
        fn()
    owned = [*model.parameters(), *model.buffers(), *(t for b in batches for t in b)]
    if getattr(fn, "optimizer", None) is not None:
        owned += [t for s in fn.optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    with LiveTensorBytes("cpu", include_existing=False) as live:
        for t in owned:
            live.track(t, check_budget=False)
        live.reset_peak()
        out = fn()
    del out
    return live.peak


@pytest.mark.parametrize("phase,selector", [("select", "fps"), ("inference", None), ("train_step", "fps"),
                                            ("train_step", None)])
def test_a_user_model_on_the_sim_predicts_the_cpu_bytes(user_file, phase, selector):
    """sim:cpu's fake-tensor peak equals the real cpu peak (the sim's claim, held on a user model)."""
    name = f"{user_file}:make"
    cell = Cell(model=name, batch_size=4, phase=phase, selector=selector)
    warmup = 1 if phase == "train_step" else 0
    model, batches = _cpu_model(user_file)
    prepared = phases.prepare(cell, model, batches[:1], backend_for("cpu"))
    real = _real_peak(prepared.fn, model, batches[:1], warmup)

    for target in ("sim:cpu", "sim:h100"):
        with torch.device("meta"):  # as the sim builds every model: no storage until the simulator gives it
            meta = build_factory_model(name, num_classes=5)
        assert all(p.device.type == "meta" for p in meta.parameters())
        with Simulator(target, what=repr(name)) as sim:
            fake = sim.module(meta)
            batch = sim.batch(fake, 4, torch.float32)
            assert batch[0].shape == (4, 3, 16, 16)
            sim_prepared = phases.prepare(cell, fake, [batch], SimPhaseHooks(sim))
            # a selection's count is known before it runs on the sim (from the budget), on the cpu from its mask
            assert sim_prepared.params_trainable == (K1_TRAINABLE if phase == "select" else prepared.params_trainable)
            stats = sim.measure(sim_prepared.fn, warmup=warmup, model=fake, inputs=[batch],
                                optimizer=getattr(sim_prepared.fn, "optimizer", None))
        if target == "sim:cpu":
            assert stats.peak_bytes == real
        else:  # 512-byte blocks and cuBLAS workspaces only add
            assert stats.peak_bytes > real and stats.flops > 0
