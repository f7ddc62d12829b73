"""Models and batches made of fake tensors, and one-line errors for code that needs values.

A model is built on the ``meta`` device (timm's initialisers run, no memory
is used), cast there, then materialised as fake CPU tensors with
``to_empty``, so every parameter is allocated once, through the tracker, in
the order ``model.to(device)`` would allocate it. (Building directly under
``FakeTensorMode`` fails: some timm initialisers call ``.item()``.)
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch._subclasses import fake_tensor as ft

from fps_profile.errors import UserError

NEEDS_VALUES = (ft.DataDependentOutputException, ft.DynamicOutputShapeException)


def new_fake_mode() -> ft.FakeTensorMode:
    """A fake mode that accepts real and meta inputs (converted on use)."""
    return ft.FakeTensorMode(allow_non_fake_inputs=True)


def build_model(name: str, dtype: torch.dtype, image_size: int | None = None,
                num_classes: int | None = None) -> nn.Module:
    """Create timm model, ``hf:`` language model or user factory ``name`` on the meta device, in
    ``dtype`` (with ``num_classes`` classes where given: a data set's); call :func:`materialize` next."""
    from fps_profile.models.factory import build_factory_model, is_factory_name
    from fps_profile.models.hf import build_lm, is_hf_name
    from fps_profile.models import build_timm, check_model_name

    check_model_name(name)
    if is_hf_name(name):
        if image_size is not None:
            raise UserError(f"--image-size applies to image models, not to language model {name!r}")
        with torch.device("meta"):
            return build_lm(name, dtype)
    classes = {} if num_classes is None else {"num_classes": num_classes}
    if is_factory_name(name):  # the factory's own errors are one line already
        with torch.device("meta"):
            return build_factory_model(name, image_size=image_size, **classes).to(dtype=dtype)
    try:
        with torch.device("meta"):
            model = build_timm(name, image_size=image_size, **classes)
    except UserError as exc:  # any failure here is a model the sim cannot build
        cause = exc.__cause__
        if cause is None:
            raise
        raise UserError(f"sim cannot build {name!r} without real tensors ({_op_or_message(cause)}); "
                        "measure it on a real device (--device cpu or cuda)") from cause
    return model.to(dtype=dtype)


def materialize(module: nn.Module, device: str = "cpu") -> nn.Module:
    """Give a meta (or real) ``module`` fake storage on ``device``; call inside the fake mode.

    As ``module.to_empty(device=device)`` (same allocation order: children first,
    then a module's parameters, then its buffers), except that a tensor shared by
    several modules (a language model's ``lm_head`` tied to its embedding) stays
    one tensor, as ``model.to("cuda")`` keeps it.
    """
    if any(p.device.type != "meta" for p in module.parameters()):
        module = module.to("meta")
    _to_empty_shared(module, torch.device(device), {})
    return module


def _to_empty_shared(module: nn.Module, device: torch.device, memo: dict) -> None:
    for child in module.children():
        _to_empty_shared(child, device, memo)
    for table in (module._parameters, module._buffers):
        for key, old in table.items():
            if old is None:
                continue
            new = memo.get(id(old))
            if new is None:
                with torch.no_grad():
                    new = torch.empty_like(old, device=device)
                if isinstance(old, nn.Parameter):
                    new = nn.Parameter(new, old.requires_grad)
                memo[id(old)] = new
                memo[("keep", id(old))] = old  # keeps ``id(old)`` unique until the walk ends
            table[key] = new


def batch(model: nn.Module, batch_size: int, dtype: torch.dtype,
          image_size: int | None = None, seq_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels (token ids and labels for a language model) shaped as
    :func:`fps_profile.models.synthetic_batches` makes them."""
    from fps_profile.models.task import is_causal_lm
    from fps_profile.models import check_batch_size, check_image_size, input_size

    check_batch_size(batch_size)
    if is_causal_lm(model):
        from fps_profile.models.hf import empty_token_batch

        return empty_token_batch(model, batch_size, seq_len)
    if seq_len is not None:
        raise UserError("a sequence length applies to language models (hf:...), not to image models")
    check_image_size(image_size)
    c, h, w = input_size(model, image_size)
    return torch.empty(batch_size, c, h, w, dtype=dtype), torch.empty(batch_size, dtype=torch.long)


@contextlib.contextmanager
def real_tensors():
    """Let new tensors be real inside the block (ops on fake tensors stay fake)."""
    with ft.unset_fake_temporarily():
        yield


def _op_or_message(exc: BaseException) -> str:
    func = getattr(exc, "func", None)
    if func is not None:
        return f"operation {func}"
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def needs_values_error(exc: BaseException, what: str) -> UserError | None:
    """A one-line :class:`UserError` if ``exc`` means ``what`` needs tensor values, else None."""
    symbolic = ()
    try:
        from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

        symbolic = (GuardOnDataDependentSymNode,)
    except ImportError:  # pragma: no cover - older torch
        pass
    if isinstance(exc, NEEDS_VALUES + symbolic):
        return UserError(f"sim cannot run {what}: {_op_or_message(exc)} needs tensor values "
                         "(data-dependent control flow or output shape); measure it on a real device "
                         "(--device cpu or cuda)")
    if isinstance(exc, (ft.UnsupportedOperatorException, ft.UnsupportedFakeTensorException)):
        return UserError(f"sim cannot run {what}: {_op_or_message(exc)} has no fake-tensor implementation; "
                         "measure it on a real device (--device cpu or cuda)")
    return None
