"""PyTorch's ``MemTracker`` (a private API), behind one function: a second opinion on a peak.

``torch.distributed._tools.mem_tracker.MemTracker`` classifies live memory by
what holds it, as :class:`~fps_profile.trackers.breakdown.PeakBreakdown` does,
but with other categories: every tensor made during a forward pass is an
"activation" (saved for backward or not), every one made during backward a
"temporary", and tensors it was told about that are neither parameters,
buffers nor optimizer state are "other". It is not used for the rows
(docs/breakdown.md says why); the tests compare the two on the same run.
Being private, it may change with any torch release: this module is the one
place that imports it.
"""

from __future__ import annotations

from torch import nn
from torch.utils._pytree import tree_leaves

# MemTracker's reference types -> names used here.
_NAMES = {"Parameter": "weights", "Buffer": "buffers", "Gradient": "gradients", "Optstate": "optimizer_state",
          "Activation": "made_in_forward", "Temp": "made_in_backward", "Other": "external"}


def memtracker_peak(fn, model: nn.Module, *, inputs=(), optimizer=None) -> dict[str, int]:
    """Run ``fn`` once under ``MemTracker``; its breakdown of the peak.

    Args:
        fn: The work.
        model: Its parameters and buffers are tracked from the start.
        inputs: Tensors alive before the run that should count (``external``).
        optimizer: Its state is ``optimizer_state``.

    Returns:
        ``weights``, ``buffers``, ``gradients``, ``optimizer_state``,
        ``made_in_forward``, ``made_in_backward``, ``external`` and ``total``
        bytes at MemTracker's peak, summed over devices.
    """
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    tracker.track_external(model, *([optimizer] if optimizer is not None else []),
                           *(t for t in tree_leaves(inputs) if hasattr(t, "untyped_storage")))
    with tracker:
        out = fn()
        del out
    out = dict.fromkeys([*_NAMES.values(), "total"], 0)
    for snapshot in tracker.get_tracker_snapshot("peak").values():
        for key, value in snapshot.items():
            name = _NAMES.get(getattr(key, "value", key), "total" if key == "Total" else None)
            if name is not None:
                out[name] += value
    return out
