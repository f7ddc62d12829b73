"""Real data for a measurement (``--data NAME_OR_PATH``), in place of synthetic noise.

``NAME_OR_PATH`` is one of:

* ``digits`` (the embedded default): scikit-learn's bundled 8x8 handwritten digits,
  1,797 real images of 10 classes, no download (``pip install 'fps-profile[data]'``);
* a directory in ImageFolder layout: ``train/<class>/*`` and ``val/<class>/*``, or
  ``<class>/*`` alone (split here);
* a ``.npz``, ``.pt`` or ``.pth`` file of image tensors (keys: :mod:`fps_profile.data.sources`);
* a ``.txt`` or ``.jsonl`` file of text, for ``hf:`` language models (:mod:`fps_profile.data.text`).

A class subset may follow a colon: ``digits:0-4``, ``digits:5-9``, ``flowers/:daisy,rose``
(or pass ``classes=``); labels are renumbered ``0 .. K-1`` in class order. A
source without its own split is split here, stratified by class, with
``val_fraction`` and ``seed``. Selection batches (:func:`data_batches`) are drawn,
seeded, from the training split; preprocessing is the model's own
(:mod:`fps_profile.data.images`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fps_profile.data.images import ImageData, model_transform
from fps_profile.data.text import TextData
from fps_profile.errors import UserError, did_you_mean

__all__ = ["DIGITS", "ImageData", "TextData", "check_data_spec", "data_batches", "load_data", "model_transform",
           "parse_data_spec"]

DIGITS = "digits"
EMBEDDED = (DIGITS,)
IMAGE_FILES = (".npz", ".pt", ".pth")
TEXT_FILES = (".txt", ".jsonl")


def parse_data_spec(spec: str) -> tuple[str, str | None]:
    """``(source, classes)``: ``digits:0-4`` -> ``("digits", "0-4")``; a path that exists is never split."""
    if not isinstance(spec, str) or not spec:
        raise UserError(f"data must be a name or a path, not {spec!r}")
    if Path(spec).expanduser().exists() or ":" not in spec:
        return spec, None
    source, _, classes = spec.rpartition(":")
    if source in EMBEDDED or Path(source).expanduser().exists():
        return source, classes
    return spec, None


def _kind(source: str, spec: str) -> str:
    """``digits``, ``folder``, ``tensors`` or ``text``; one-line errors for anything else."""
    if source in EMBEDDED:
        return DIGITS
    path = Path(source).expanduser()
    if path.is_dir():
        return "folder"
    if not path.exists():
        if "/" in source or "." in Path(source).name:
            raise UserError(f"data {spec!r}: no such file or directory")
        raise did_you_mean(source, EMBEDDED, "data set (or no such file or directory)")
    suffix = path.suffix.lower()
    if suffix in IMAGE_FILES:
        return "tensors"
    if suffix in TEXT_FILES:
        return "text"
    raise UserError(f"data {spec!r}: unknown format {suffix or '(no suffix)'!r} "
                    f"(known: {', '.join(IMAGE_FILES + TEXT_FILES)}, an image folder, or {', '.join(EMBEDDED)})")


def check_data_spec(spec: str) -> str:
    """Fail with one line unless ``spec`` names a data set or an existing file/folder of a known format.

    Returns:
        Its kind: ``digits``, ``folder``, ``tensors`` or ``text``.
    """
    source, _ = parse_data_spec(spec)
    kind = _kind(source, spec)
    if kind == DIGITS:
        try:
            import sklearn  # noqa: F401
        except ImportError:
            raise UserError("the digits data set needs scikit-learn: pip install 'fps-profile[data]'") from None
    return kind


def load_data(spec: str, *, classes=None, val_fraction: float = 0.2, seed: int = 0,
              tokenizer: str | None = None) -> ImageData | TextData:
    """Load a data set.

    Args:
        spec: ``digits``, a folder, a tensor file or a text file, optionally ``:CLASSES``
            (see the module docstring).
        classes: Class subset (``"0-4"``, ``"cat,dog"``, or a list); overrides one in ``spec``.
        val_fraction: Share of each class kept for validation where the source has no split.
        seed: Seed of that split (the batches have their own).
        tokenizer: Text only: a local tokenizer directory; None for byte-level tokens.

    Raises:
        UserError: A bad name, path, format or content (one line).
    """
    from fps_profile.data import sources
    from fps_profile.data.split import check_fraction

    check_fraction(val_fraction)
    source, in_spec = parse_data_spec(spec)
    classes = classes if classes is not None else in_spec
    kind = check_data_spec(spec)
    if kind == "text":
        from fps_profile.data.text import read_documents, tokenize
        from fps_profile.models.weights import file_sha256

        if classes is not None:
            raise UserError(f"data {spec!r}: a class subset applies to image data, not to text")
        path = Path(source).expanduser()
        tokens, described = tokenize(read_documents(path, spec), tokenizer, spec)
        return TextData(spec, tokens, described, file_sha256(path), val_fraction, seed)
    if tokenizer is not None:
        raise UserError(f"data {spec!r}: a tokenizer applies to text data (.txt, .jsonl), not to images")
    path = Path(source).expanduser()
    pool = sources.digits() if kind == DIGITS else sources.image_folder(path, spec) if kind == "folder" \
        else sources.tensor_file(path, spec)
    return ImageData.from_pool(spec, pool, classes=classes, val_fraction=val_fraction, seed=seed)


def data_batches(data: ImageData | TextData, model: nn.Module, batch_size: int, num_batches: int = 1, seed: int = 0,
                 device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                 image_size: int | None = None, seq_len: int | None = None, split: str = "train"
                 ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of real data, shaped as :func:`fps_profile.models.synthetic_batches` gives them.

    Same arguments as ``synthetic_batches`` (``data`` first, ``split`` last), so a
    phase takes them unchanged: images ``[batch_size, C, H, W]`` in ``dtype`` with
    int64 labels, or token ids ``[batch_size, seq_len]`` twice for a language model.

    Raises:
        UserError: Text data for an image model or the reverse, a bad batch size or count,
            and the data's own errors.
    """
    from fps_profile.models.task import is_causal_lm
    from fps_profile.models import check_batch_size, check_image_size

    check_batch_size(batch_size)
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
        raise UserError(f"num_batches must be an integer >= 1, not {num_batches!r}")
    if is_causal_lm(model):
        if not isinstance(data, TextData):
            raise UserError(f"data {data.name!r} is image data; a language model needs text (.txt, .jsonl)")
        if image_size is not None:
            raise UserError("--image-size applies to image models, not to language models")
        return data.batches(model, batch_size, num_batches, seed, device, seq_len, split)
    if isinstance(data, TextData):
        raise UserError(f"data {data.name!r} is text; an image model needs images (digits, a folder, .npz, .pt)")
    if seq_len is not None:
        raise UserError("a sequence length applies to language models (hf:...), not to image models")
    check_image_size(image_size)
    return data.batches(model, batch_size, num_batches, seed, device, dtype, image_size, split)
