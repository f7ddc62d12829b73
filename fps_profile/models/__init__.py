"""Building models (randomly initialised) and synthetic inputs for them: timm image models, and
causal language models named ``hf:...`` (:mod:`fps_profile.models.hf`)."""

from __future__ import annotations

import functools

import torch
from torch import nn

from fps_profile.errors import UserError, did_you_mean
from fps_profile.models.checks import check_image_size

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}


def parse_dtype(name: str) -> torch.dtype:
    """``"float32"``/``"fp32"``, ``"bfloat16"``/``"bf16"`` or ``"float16"``/``"fp16"``."""
    key = DTYPE_ALIASES.get(name, name)
    if key not in DTYPES:
        raise did_you_mean(name, list(DTYPES) + list(DTYPE_ALIASES), "dtype")
    return DTYPES[key]


@functools.cache
def _timm_names() -> tuple[str, ...]:
    import timm

    return tuple(timm.list_models())


def check_model_name(name: str) -> None:
    """Fail with close suggestions unless timm knows ``name`` (or, for ``hf:...``, a config builds it;
    for ``package.module:factory`` / ``file.py:factory``, the factory is found)."""
    import timm

    from fps_profile.models.factory import check_factory_name, is_factory_name
    from fps_profile.models.hf import check_hf_name, is_hf_name

    if is_hf_name(name):
        check_hf_name(name)
        return
    if is_factory_name(name):
        check_factory_name(name)
        return

    if not timm.is_model(name):
        raise did_you_mean(name, _timm_names(), "timm model", show_known=False)


def build_timm(name: str, *, image_size: int | None = None, **kwargs) -> nn.Module:
    """``timm.create_model(name, pretrained=False)`` on the current default device, with one-line errors.

    A model built without a classifier (``num_classes=0``, e.g. EVA-02's MIM
    checkpoints) gets a 1000-class one, since the losses and the fine-tuning step
    need logits (pass ``num_classes`` to choose).

    Args:
        name: A timm model name.
        image_size: Input height and width. Models whose layout depends on it (ViT
            position embeddings, Swin windows) are built for it (``img_size``);
            convolutional models take any size as they are.
        **kwargs: Passed to ``timm.create_model``.

    Raises:
        UserError: Unknown name, or timm cannot build it (the message names the model).
    """
    import timm

    check_model_name(name)
    try:
        if image_size is not None:
            try:
                model = timm.create_model(name, pretrained=False, img_size=image_size, **kwargs)
            except TypeError as exc:
                if "img_size" not in str(exc):
                    raise
                model = timm.create_model(name, pretrained=False, **kwargs)
        else:
            model = timm.create_model(name, pretrained=False, **kwargs)
        if getattr(model, "num_classes", None) == 0 and "num_classes" not in kwargs \
                and hasattr(model, "reset_classifier"):
            model.reset_classifier(1000)
    except Exception as exc:  # noqa: BLE001 - timm raises anything from a model's constructor
        text = str(exc).strip().splitlines()
        raise UserError(f"timm cannot build {name!r}"
                        f"{f' at image size {image_size}' if image_size else ''}: "
                        f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")) from exc
    return model


def create_model(name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 *, image_size: int | None = None, **kwargs) -> nn.Module:
    """A randomly initialised timm model, ``hf:`` language model or user factory's model (no weights
    are downloaded).

    Args:
        name: A timm model name (``timm.list_models()``), ``hf:<name>`` / ``hf:<path>.json``
            (:mod:`fps_profile.models.hf`), or ``package.module:factory`` / ``file.py:factory``
            (:mod:`fps_profile.models.factory`).
        device: Where to build it.
        dtype: Parameter dtype.
        image_size: Input size to build it for (see :func:`build_timm`); default the model's own.
        **kwargs: Passed to ``timm.create_model`` (e.g. ``num_classes``).
    """
    from fps_profile.models.factory import build_factory_model, is_factory_name
    from fps_profile.models.hf import build_lm, is_hf_name

    if is_hf_name(name):
        if image_size is not None:
            raise UserError(f"--image-size applies to image models, not to language model {name!r}")
        return build_lm(name, dtype).to(device=device)
    if is_factory_name(name):
        model = build_factory_model(name, image_size=image_size, **kwargs)
    else:
        model = build_timm(name, image_size=image_size, **kwargs)
    return model.to(device=device, dtype=dtype)


def meta_model(name: str, dtype: torch.dtype = torch.float32, *, image_size: int | None = None) -> nn.Module:
    """:func:`create_model` on the meta device: every shape, no storage (a 70B model costs nothing).

    Raises:
        UserError: Unknown name, or a model that cannot be built (as :func:`create_model`).
    """
    check_model_name(name)
    with torch.device("meta"):
        return create_model(name, device="meta", dtype=dtype, image_size=image_size)


def input_size(model: nn.Module, image_size: int | None = None) -> tuple[int, int, int]:
    """``(channels, height, width)`` the model expects: its ``pretrained_cfg["input_size"]``
    (FastViT 256, Inception 299, ...), with height and width ``image_size`` when given."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    if "input_size" in cfg:
        c, h, w = tuple(cfg["input_size"])
    else:
        pe = getattr(model, "patch_embed", None)
        if pe is not None and getattr(pe, "img_size", None):
            c, (h, w) = pe.proj.in_channels, pe.img_size
        else:
            c, h, w = 3, 224, 224
    return (c, image_size, image_size) if image_size else (c, h, w)


def num_classes(model: nn.Module) -> int:
    return int(getattr(model, "num_classes", 0) or 1000)


def synthetic_batches(model: nn.Module, batch_size: int, num_batches: int = 1, seed: int = 0,
                      device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                      image_size: int | None = None, seq_len: int | None = None
                      ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random normal images and uniform labels shaped for ``model``; token batches for a language model.

    Args:
        model: The model the batches are for (sets image size, classes, device, dtype).
        batch_size: Images per batch (>= 1).
        num_batches: Number of batches (>= 1).
        seed: Seed, so the same call gives the same data.
        device: Defaults to the model's device.
        dtype: Defaults to the model's parameter dtype.
        image_size: Height and width; defaults to the model's own (:func:`input_size`).
        seq_len: Tokens per sequence of a language model (:func:`fps_profile.models.hf.token_batches`).
    """
    from fps_profile.models.task import is_causal_lm

    check_batch_size(batch_size)
    if num_batches < 1:
        raise UserError(f"num_batches must be >= 1, not {num_batches}")
    if is_causal_lm(model):
        from fps_profile.models.hf import token_batches

        return token_batches(model, batch_size, seq_len, num_batches, seed, device)
    if seq_len is not None:
        raise UserError("a sequence length applies to language models (hf:...), not to image models")
    p = next(model.parameters())
    device = torch.device(device) if device is not None else p.device
    dtype = dtype or p.dtype
    gen = torch.Generator().manual_seed(seed)
    check_image_size(image_size)
    c, h, w = input_size(model, image_size)
    out = []
    for _ in range(num_batches):
        images = torch.randn(batch_size, c, h, w, generator=gen).to(device=device, dtype=dtype)
        labels = torch.randint(0, num_classes(model), (batch_size,), generator=gen).to(device)
        out.append((images, labels))
    return out


def check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch size must be an integer >= 1, not {batch_size!r}")
