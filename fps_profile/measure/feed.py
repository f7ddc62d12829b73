"""What the finetune phase trains and evaluates on: a batch per step and the held-out batches.

* a real image data set: its training split preprocessed once (the model's evaluation
  transform, :mod:`fps_profile.data.images`; no augmentation), batches of indices drawn with
  the cell's seed (:func:`fps_profile.data.split.draw`: epochs without repeats); the held-out
  split whole, in chunks;
* a text file: sequences of the training split drawn the same way; the held-out sequences;
* synthetic inputs (no data): a fresh seeded batch per step (step ``i`` of seed ``s`` is
  always the same batch) and :data:`SYNTHETIC_EVAL` seeded batches to evaluate on, with
  random labels: the memory and time are a real run's, the accuracy is chance.

The data waits as NumPy arrays on the host, invisible to the memory trackers (a GPU run
keeps it in host memory too); each step's batch becomes a tensor on the model's device
when its step comes, and the held-out chunks when the evaluation comes, so the measured
step holds one batch, as a ``train_step`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

#: Samples per evaluation forward (the held-out split is evaluated in chunks of this many).
EVAL_CHUNK = 256
#: Batches of synthetic data to evaluate on.
SYNTHETIC_EVAL = 4
# Step i of seed s draws from seed s * _STEP_SEEDS + i + 1, the held-out batches from (s + 1) * _STEP_SEEDS - 1:
# within a cell, never the selection batches' seed s nor one another's.
_STEP_SEEDS = 1_000_003


@dataclass
class Feed:
    """Training batches by step and the held-out batches.

    Attributes:
        train: ``step -> (inputs, labels)`` on the model's device and dtype.
        held_out: ``() -> iterable of (inputs, labels)`` of the held-out split, made when called;
            None: nothing to evaluate (the sim).
        per_sample: Training samples per step.
    """

    train: Callable[[int], tuple[torch.Tensor, torch.Tensor]]
    held_out: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]] | None
    per_sample: int


def _host(t: torch.Tensor) -> np.ndarray:
    """A NumPy copy of ``t`` (``t.numpy()`` would keep the tensor, and the trackers would count it)."""
    return t.detach().cpu().numpy().copy()


def _placed(model: nn.Module):
    """``(x, y) -> tensors on the model's device`` (NumPy arrays or tensors; floating inputs in its dtype)."""
    p = next(model.parameters())

    def place(x, y):
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        return (x.to(device=p.device, dtype=p.dtype if x.is_floating_point() else None), y.to(p.device))

    return place


def _chunks(x: np.ndarray, y: np.ndarray, place) -> Callable[[], Iterator]:
    def chunks():
        for start in range(0, len(y), EVAL_CHUNK):
            yield place(x[start:start + EVAL_CHUNK], y[start:start + EVAL_CHUNK])

    return chunks


def image_feed(cell, model: nn.Module, data, steps: int) -> Feed:
    """Batches of a real image data set (see the module docstring)."""
    from fps_profile.data.split import draw

    place = _placed(model)
    train_x, train_y = (_host(t) for t in data.tensors(data.train, model, cell.image_size))
    order = [_host(i) for i in draw(torch.arange(len(train_y)), cell.batch_size, max(steps, 1), cell.seed,
                                    f"the train split of {data.name!r}")]
    val_x, val_y = (_host(t) for t in data.tensors(data.val, model, cell.image_size))
    return Feed(lambda i: place(train_x[order[i]], train_y[order[i]]), _chunks(val_x, val_y, place),
                cell.batch_size)


def text_feed(cell, model: nn.Module, data, steps: int) -> Feed:
    """Sequences of a text file (see the module docstring)."""
    from fps_profile.models.hf import DEFAULT_SEQ_LEN

    place = _placed(model)
    train = [_host(ids) for ids, _ in data.batches(model, cell.batch_size, max(steps, 1), cell.seed, "cpu",
                                                    cell.seq_len, "train")]
    val = _host(data.sequences(cell.seq_len or DEFAULT_SEQ_LEN, "val"))
    return Feed(lambda i: place(train[i], train[i]), _chunks(val, val, place), cell.batch_size)


def synthetic_feed(cell, model: nn.Module) -> Feed:
    """Fresh seeded random batches (see the module docstring)."""
    from fps_profile.models import synthetic_batches

    def batches(seed: int, n: int = 1):
        return synthetic_batches(model, cell.batch_size, n, seed=seed, image_size=cell.image_size,
                                 seq_len=cell.seq_len)

    return Feed(lambda i: batches(cell.seed * _STEP_SEEDS + i + 1)[0],
                lambda: batches((cell.seed + 1) * _STEP_SEEDS - 1, SYNTHETIC_EVAL), cell.batch_size)


def feed_for(cell, model: nn.Module, data, steps: int) -> Feed:
    """The feed of ``cell``: real data where the cell has some, synthetic otherwise."""
    if data is None:
        return synthetic_feed(cell, model)
    if getattr(data, "kind", None) == "text":
        return text_feed(cell, model, data, steps)
    return image_feed(cell, model, data, steps)


def cycling_feed(batches: list) -> Feed:
    """The given batches over and over, nothing held out (the sim's fake batches)."""
    return Feed(lambda i: batches[i % len(batches)], None, int(batches[0][0].shape[0]))
