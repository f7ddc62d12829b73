"""Where image samples come from: the embedded digits, an ImageFolder directory, a tensor file.

Each reader returns a :class:`Pool`: every sample of the source, as float
images in ``[0, 1]`` read on demand, integer labels, class names, and the
source's own train/val split where it has one.

Tensor files (``.npz``, or ``.pt``/``.pth`` read with ``torch.load(weights_only=True)``)
hold either ``x`` and ``y`` (one pool, split by the caller) or ``train_x``,
``train_y``, ``val_x`` and ``val_y``; optionally ``classes``, the class names
(strings, as many as the classes). Images are ``[N, H, W]`` (grey), ``[N, C, H, W]``
or ``[N, H, W, C]`` with ``C`` 1 or 3; ``uint8`` (0-255) or floating point (taken as
``[0, 1]``). Labels are integers ``0 .. K-1``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fps_profile.errors import UserError

# ITU-R BT.601, as PIL's convert("L"); a tuple, not a tensor: a module-level tensor would live in every
# process that imports this, and the cpu backend's live-bytes tracker would count it in every peak.
_LUMA = (0.299, 0.587, 0.114)


@dataclass
class Pool:
    """All samples of a source.

    Attributes:
        images: A ``[N, C, H, W]`` tensor (uint8 or float) or a list of image file paths.
        labels: ``[N]`` int64 class indices.
        class_names: Name of each class index.
        train: Indices of the source's own training split, or None (the caller splits).
        val: Indices of its validation split, or None.
        sha256: Hash of the contents (file bytes, or the image and label arrays), or None.
    """

    images: torch.Tensor | list[str]
    labels: torch.Tensor
    class_names: tuple[str, ...]
    train: torch.Tensor | None = None
    val: torch.Tensor | None = None
    sha256: str | None = None

    def image(self, i: int, channels: int) -> torch.Tensor:
        """Sample ``i`` as a float ``[channels, H, W]`` tensor in ``[0, 1]``."""
        if isinstance(self.images, list):
            from PIL import Image

            with Image.open(self.images[i]) as img:
                img = img.convert("L" if channels == 1 else "RGB")
                x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())
            x = (x[None] if x.ndim == 2 else x.permute(2, 0, 1)).float() / 255
        else:
            x = self.images[i]
            x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        if x.shape[0] == channels:
            return x
        if x.shape[0] == 1:
            return x.expand(channels, -1, -1)
        if x.shape[0] == 3 and channels == 1:
            return (x * torch.tensor(_LUMA)[:, None, None]).sum(0, keepdim=True)
        raise UserError(f"images have {x.shape[0]} channels; the model takes {channels}")


def digits() -> Pool:
    """scikit-learn's bundled 8x8 handwritten digits: 1,797 grey images, 10 classes (0-16 scaled to [0, 1])."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise UserError("the digits data set needs scikit-learn: pip install 'fps-profile[data]'") from None
    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)[:, None]
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    digest = hashlib.sha256(bunch.images.tobytes() + bunch.target.astype(np.int64).tobytes()).hexdigest()
    return Pool(images, labels, tuple(str(i) for i in range(10)), sha256=digest)


def _scan(folder: Path, spec: str) -> tuple[list[str], list[str], list[int]]:
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    try:
        names, index = find_classes(folder)
        samples = make_dataset(folder, index, extensions=IMG_EXTENSIONS)
    except (FileNotFoundError, OSError) as exc:
        raise UserError(f"data {spec!r}: {str(exc).strip().splitlines()[0]}") from None
    return names, [p for p, _ in samples], [c for _, c in samples]


def image_folder(root: Path, spec: str) -> Pool:
    """``root/train/<class>/*`` and ``root/val/<class>/*``, or ``root/<class>/*`` (one pool)."""
    if (root / "train").is_dir() and (root / "val").is_dir():
        names, train_paths, train_labels = _scan(root / "train", spec)
        val_names, val_paths, val_labels = _scan(root / "val", spec)
        if set(val_names) - set(names):
            extra = sorted(set(val_names) - set(names))
            raise UserError(f"data {spec!r}: val/ has classes train/ lacks: {', '.join(extra[:3])}")
        val_labels = [names.index(val_names[c]) for c in val_labels]
        paths, labels = train_paths + val_paths, train_labels + val_labels
        n = len(train_paths)
        train, val = torch.arange(n), torch.arange(n, len(paths))
    else:
        names, paths, labels = _scan(root, spec)
        train = val = None
    return Pool(paths, torch.tensor(labels, dtype=torch.long), tuple(names), train, val)


def _as_tensor(value, key: str, spec: str) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        if value.dtype == object or value.dtype.kind in "USV":
            raise UserError(f"data {spec!r}: {key!r} is not numeric")
        value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor):
        raise UserError(f"data {spec!r}: {key!r} is a {type(value).__name__}, not an array")
    return value


def _images(x: torch.Tensor, key: str, spec: str) -> torch.Tensor:
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
        x = x.permute(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise UserError(f"data {spec!r}: {key!r} has shape {list(x.shape)}; images are [N, H, W], "
                        "[N, C, H, W] or [N, H, W, C] with C 1 or 3")
    if x.dtype != torch.uint8 and not x.is_floating_point():
        raise UserError(f"data {spec!r}: {key!r} is {x.dtype}; images are uint8 (0-255) or floating point (0-1)")
    return x.contiguous()


def _labels(y: torch.Tensor, n: int, key: str, spec: str) -> torch.Tensor:
    if y.ndim != 1 or len(y) != n or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise UserError(f"data {spec!r}: {key!r} must be {n} integer labels, not {y.dtype} of shape {list(y.shape)}")
    if n and int(y.min()) < 0:
        raise UserError(f"data {spec!r}: {key!r} has a negative label")
    return y.long()


def tensor_file(path: Path, spec: str) -> Pool:
    """A ``.npz``, ``.pt`` or ``.pth`` file of images and labels (keys: see the module docstring)."""
    from fps_profile.models.weights import file_sha256, safe_torch_load

    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as f:  # object arrays (pickles) refused
                content = {k: f[k] for k in f.files}
        except Exception as exc:  # noqa: BLE001 - numpy raises many types for a bad file
            text = str(exc).strip().splitlines()
            raise UserError(f"data {spec!r} cannot be read (corrupt, or holds pickled objects): "
                            f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")) from None
    else:
        content = safe_torch_load(path, spec, "data")
    if not isinstance(content, dict):
        raise UserError(f"data {spec!r} holds a {type(content).__name__}, not a dict of arrays")
    if {"train_x", "train_y", "val_x", "val_y"} <= content.keys():
        keys = [("train_x", "train_y"), ("val_x", "val_y")]
    elif {"x", "y"} <= content.keys():
        keys = [("x", "y")]
    else:
        raise UserError(f"data {spec!r} has keys {', '.join(map(repr, sorted(content)))}; expected x and y, "
                        "or train_x, train_y, val_x and val_y")
    xs, ys = [], []
    for kx, ky in keys:
        x = _images(_as_tensor(content[kx], kx, spec), kx, spec)
        xs.append(x)
        ys.append(_labels(_as_tensor(content[ky], ky, spec), len(x), ky, spec))
    if len(xs) == 2 and xs[0].shape[1:] != xs[1].shape[1:]:
        raise UserError(f"data {spec!r}: train_x and val_x images differ in shape")
    labels = torch.cat(ys)
    k = int(labels.max()) + 1 if len(labels) else 0
    names = content.get("classes")
    if names is not None:
        names = [str(n) for n in (names.tolist() if isinstance(names, np.ndarray) else names)]
        if len(names) < k or len(set(names)) != len(names):
            raise UserError(f"data {spec!r}: 'classes' must name each of the {k} classes once")
    else:
        names = [str(i) for i in range(k)]
    train = val = None
    if len(xs) == 2:
        train, val = torch.arange(len(xs[0])), torch.arange(len(xs[0]), len(labels))
    if len({x.dtype for x in xs}) > 1:  # uint8 and float splits: both as floats in [0, 1]
        xs = [x.float() / 255 if x.dtype == torch.uint8 else x.float() for x in xs]
    images = torch.cat(xs)
    return Pool(images, labels, tuple(names), train, val, file_sha256(path))
