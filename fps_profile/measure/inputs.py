"""A cell's inputs: its model (with weights), its data and its batches, seeded by its ``seed``.

Every backend builds them here, so a cell means the same thing on cpu, cuda and sim:

* the data (``cell.data``): None for synthetic inputs, else :func:`fps_profile.data.load_data`,
  split with the cell's seed; an image data set sets the model's number of classes;
* the model: :func:`fps_profile.models.build.build_model` right after
  :func:`~fps_profile.models.seeding.seed_everything` (its initialisation is the seed's), with
  ``cell.weights`` loaded (on the sim: checked only);
* the batches: ``cell.num_batches`` of ``cell.batch_size`` from the training split (or synthetic),
  drawn with the seed.

What the weights and data were goes into the row's ``env`` (``env["weights"]``: source,
sha256, the keys left at random initialisation; ``env["data"]``: name, sha256, classes,
split sizes, split seed), beside the ``weights``, ``data`` and ``seed`` axes the row has.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
from torch import nn

from fps_profile.errors import UserError


def check_sources(model: str, weights: str | None = None, data: str | None = None) -> None:
    """Everything a cell reads from disk or a registry, checked before anything runs (one line each):
    the model (a timm/hf name, a factory that is found), the weights (an existing file of a known
    format, or pretrained weights timm knows for the model), the data (a known name, an existing
    file or folder of a known format, text for a language model and images for the others)."""
    from fps_profile.data import check_data_spec
    from fps_profile.models.build import check_sources as check_model_sources
    from fps_profile.models.hf import is_hf_name

    check_model_sources(model, weights)
    if data is None:
        return
    kind = check_data_spec(data)
    if (kind == "text") != is_hf_name(model):
        need = "text (.txt, .jsonl)" if is_hf_name(model) else "images (digits, a folder, .npz, .pt)"
        raise UserError(f"data {data!r} is {'text' if kind == 'text' else 'images'}; model {model!r} needs {need}")


@functools.lru_cache(maxsize=4)
def cell_data(spec: str, seed: int):
    """The data set ``spec``, split with ``seed`` (loaded once per process)."""
    from fps_profile.data import load_data

    return load_data(spec, seed=seed)


def num_classes_of(data) -> int | None:
    """The classes an image data set gives the model's classifier (None: synthetic or text)."""
    return getattr(data, "num_classes", None) if data is not None else None


@dataclass
class Inputs:
    """A built cell: model, selection batches, the data set and where everything came from."""

    model: nn.Module
    batches: list
    data: object = None
    provenance: dict = field(default_factory=dict)


def provenance(weights_info, data) -> dict:
    """``{"weights": {...}, "data": {...}}`` for a row's ``env`` (only what is set)."""
    out = {}
    if weights_info is not None:
        out["weights"] = {"source": weights_info.source, "sha256": weights_info.sha256,
                          "reinitialized": list(weights_info.reinitialized)}
    if data is not None:
        out["data"] = data.provenance()
    return out


def batches_for(cell, model: nn.Module, data, num_batches: int | None = None, split: str = "train",
                seed_offset: int = 0) -> list:
    """``num_batches`` (default the cell's) batches for ``model``: real ones from ``data``'s ``split``,
    else synthetic, drawn with the cell's seed (plus ``seed_offset``)."""
    from fps_profile.models import synthetic_batches

    n = num_batches or cell.num_batches
    seed = cell.seed + seed_offset
    if data is None:
        return synthetic_batches(model, cell.batch_size, n, seed=seed, image_size=cell.image_size,
                                 seq_len=cell.seq_len)
    from fps_profile.data import data_batches

    return data_batches(data, model, cell.batch_size, n, seed=seed, image_size=cell.image_size,
                        seq_len=cell.seq_len, split=split)


def build_inputs(cell, device: torch.device, dtype: torch.dtype) -> Inputs:
    """The cell's model on ``device`` and its selection batches (see the module docstring)."""
    from fps_profile.models.build import build_model
    from fps_profile.models.seeding import seed_everything

    data = cell_data(cell.data, cell.seed) if cell.data is not None else None
    seed_everything(cell.seed)
    model, info = build_model(cell.model, device=device, dtype=dtype, image_size=cell.image_size,
                              num_classes=num_classes_of(data), weights=cell.weights)
    return Inputs(model, batches_for(cell, model, data), data, provenance(info, data))
