"""One seed for everything random in a cell.

The rule, the same in every phase, backend and command (``fps-profile select``, a sweep's
cells, the distributed ranks):

* :func:`seed_everything` with the cell's ``seed`` right before the model is built, so its
  initialisation (timm's, a factory's, a language model's) draws from it;
* every data draw takes the seed explicitly: synthetic inputs
  (:func:`fps_profile.models.synthetic_batches`), a real data set's split and batches
  (:func:`fps_profile.data.load_data`, :func:`fps_profile.data.data_batches`);
* the selection runs under :func:`fps_profile.select`'s ``seed``: the global generators are
  seeded again for its passes (dropout in GPS's train-mode pass, an augmentation of GPS's views
  that draws numbers) and given back to the caller as they were afterwards (:func:`seeded`), and a
  selector with a ``seed`` option of its own (``random``) gets it unless one is given;
* fine-tuning draws its batches with the seed and its dropout from the generators seeded above.

The same seed then gives the same mask, and on the same machine the same fine-tuned weights.
"""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def seeded(seed: int | None):
    """Run the body with every global generator seeded with ``seed`` (:func:`seed_everything`), then
    give the caller's generator states back: a library call must not move its caller's random
    stream. ``None``: nothing is seeded or restored."""
    if seed is None:
        yield
        return
    state = random.getstate()
    try:
        import numpy as np

        np_state = np.random.get_state()
    except ImportError:  # pragma: no cover
        np = np_state = None
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        seed_everything(int(seed))
        try:
            yield
        finally:
            random.setstate(state)
            if np is not None:
                np.random.set_state(np_state)


def takes_seed(cls) -> bool:
    """Whether selector class ``cls`` takes a ``seed`` option."""
    try:
        return "seed" in inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return False
