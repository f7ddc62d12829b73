"""One seed for everything random in a cell.

The rule, the same in every phase, backend and command (``fps-profile select``, a sweep's
cells, the distributed ranks):

* :func:`seed_everything` with the cell's ``seed`` right before the model is built, so its
  initialisation (timm's, a factory's, a language model's) draws from it;
* every data draw takes the seed explicitly: synthetic inputs
  (:func:`fps_profile.models.synthetic_batches`), a real data set's split and batches
  (:func:`fps_profile.data.load_data`, :func:`fps_profile.data.data_batches`);
* the selection runs under :func:`fps_profile.select`'s ``seed``: the global generators are
  seeded again (dropout in GPS's train-mode pass, an augmentation of GPS's views that draws
  numbers), and a selector with a ``seed`` option of its own (``random``) gets it unless
  one is given;
* fine-tuning draws its batches with the seed and its dropout from the generators seeded above.

The same seed then gives the same mask, and on the same machine the same fine-tuned weights.
"""

from __future__ import annotations

import inspect
import random

import torch


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (every CUDA device's too) with ``seed``."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover - numpy comes with torch's usual installs
        pass
    torch.manual_seed(seed)  # seeds every device's default generator


def takes_seed(cls) -> bool:
    """Whether selector class ``cls`` takes a ``seed`` option."""
    try:
        return "seed" in inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return False
