"""An image classification data set: class subset, train/val split, and batches shaped for a model.

**Preprocessing.** A batch goes through the model's own evaluation transform,
built by timm: ``resolve_data_config`` (the model's ``pretrained_cfg``: mean, std,
interpolation, crop fraction; for a model without one, timm's ImageNet defaults)
with the input size :func:`fps_profile.models.input_size` gives, then
``create_transform(is_training=False)``: resize, centre crop, normalise. It is
applied to each sample as a float ``[C, H, W]`` tensor in ``[0, 1]`` (the tensor
path of the same torchvision transforms: antialiased resize, close to but not
bit-identical with resizing a PIL image). No augmentation, in either split, so
the same seed always gives the same batches. A grey image is repeated over three
channels for an RGB model; an RGB image becomes grey (BT.601 luma) for a
one-channel model, whose mean and std are the averages of the model's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from fps_profile.data.sources import Pool
from fps_profile.data.split import draw, parse_classes, stratified_split
from fps_profile.errors import UserError

SPLITS = ("train", "val")


def model_transform(model: nn.Module, image_size: int | None = None):
    """``(channels, transform)``: timm's evaluation transform for ``model`` (see the module docstring)."""
    from timm.data import create_transform, resolve_data_config

    from fps_profile.models import input_size

    c, h, w = input_size(model, image_size)
    cfg = resolve_data_config(args={"input_size": (c, h, w)}, model=model)
    mean, std = tuple(cfg["mean"]), tuple(cfg["std"])
    if len(mean) != c:
        mean = (sum(mean) / len(mean),) * c
    if len(std) != c:
        std = (sum(std) / len(std),) * c
    transform = create_transform(input_size=(c, h, w), is_training=False, interpolation=cfg["interpolation"],
                                 mean=mean, std=std, crop_pct=cfg["crop_pct"], crop_mode=cfg.get("crop_mode"))
    return c, transform


@dataclass
class ImageData:
    """Labelled images with a fixed train/val split.

    Build it with :func:`fps_profile.data.load_data`.

    Attributes:
        name: What was asked for (``digits``, a path).
        pool: Every sample of the source (:class:`~fps_profile.data.sources.Pool`).
        class_names: Names of the classes kept, label ``i`` is ``class_names[i]``.
        labels: ``[N]`` labels of every pool sample, relabelled to ``0 .. num_classes-1``
            (-1 for samples of classes left out).
        train: Pool indices of the training split (selection batches come from here).
        val: Pool indices of the validation split.
        split_seed: Seed of the split (None: the source's own split).
        val_fraction: Fraction asked for validation (None: the source's own split).
    """

    name: str
    pool: Pool
    class_names: tuple[str, ...]
    labels: torch.Tensor
    train: torch.Tensor
    val: torch.Tensor
    split_seed: int | None = None
    val_fraction: float | None = None
    kind: str = field(default="images", init=False)

    @classmethod
    def from_pool(cls, name: str, pool: Pool, *, classes=None, val_fraction: float = 0.2,
                  seed: int = 0) -> ImageData:
        """Keep the ``classes`` subset (all: None) and split ``pool`` (its own split where it has one,
        else a stratified split with ``val_fraction`` and ``seed``)."""
        keep = list(range(len(pool.class_names))) if classes is None else \
            parse_classes(classes, pool.class_names, f"data {name!r}")
        remap = torch.full((len(pool.class_names) + 1,), -1, dtype=torch.long)
        remap[torch.tensor(keep, dtype=torch.long)] = torch.arange(len(keep))
        labels = remap[pool.labels.clamp(max=len(pool.class_names))]
        kept = torch.nonzero(labels >= 0).flatten()
        if len(kept) == 0:
            raise UserError(f"data {name!r} has no samples" + (f" of classes {classes!r}" if classes else ""))
        if pool.train is not None:
            train, val = (s[labels[s] >= 0] for s in (pool.train, pool.val))
            split_seed = fraction = None
        else:
            tr, va = stratified_split(labels[kept], val_fraction, seed)
            train, val, split_seed, fraction = kept[tr], kept[va], seed, val_fraction
        return cls(name, pool, tuple(pool.class_names[i] for i in keep), labels, train, val, split_seed, fraction)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def indices(self, split: str) -> torch.Tensor:
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r} ({', '.join(SPLITS)})")
        return self.train if split == "train" else self.val

    def tensors(self, indices: torch.Tensor, model: nn.Module, image_size: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples ``indices`` preprocessed for ``model``: float32 ``[n, C, H, W]`` images and int64 labels."""
        channels, transform = model_transform(model, image_size)
        images = torch.stack([transform(self.pool.image(int(i), channels)) for i in indices])
        return images, self.labels[indices]

    def batches(self, model: nn.Module, batch_size: int, num_batches: int = 1, seed: int = 0,
                device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                image_size: int | None = None, split: str = "train") -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``num_batches`` batches of ``batch_size`` drawn (seeded) from ``split``, shaped as
        :func:`fps_profile.models.synthetic_batches` shapes them.

        Raises:
            UserError: More classes than the model's classifier has, an empty split.
        """
        built = getattr(model, "num_classes", None)
        if isinstance(built, int) and built > 0 and self.num_classes > built:
            raise UserError(f"data {self.name!r} has {self.num_classes} classes, the model's classifier "
                            f"{built}: build it with num_classes={self.num_classes}")
        p = next(model.parameters())
        device = torch.device(device) if device is not None else p.device
        dtype = dtype or p.dtype
        out = []
        for idx in draw(self.indices(split), batch_size, num_batches, seed, f"the {split} split of {self.name!r}"):
            images, labels = self.tensors(idx, model, image_size)
            out.append((images.to(device=device, dtype=dtype), labels.to(device)))
        return out

    def provenance(self) -> dict:
        """What the data was, for a result row."""
        return {"data": self.name, "data_sha256": self.pool.sha256, "data_classes": list(self.class_names),
                "data_train": len(self.train), "data_val": len(self.val), "data_split_seed": self.split_seed,
                "data_val_fraction": self.val_fraction}
