"""PyTorch's ``FSDPMemTracker`` (a private API), behind one function: a second opinion on a sharded peak.

``torch.distributed._tools.fsdp2_mem_tracker.FSDPMemTracker`` instruments FSDP2 itself (its
pre/post-forward and backward hooks, ``UntypedStorage.resize_``) and files every tensor
under sharded/unsharded parameters, all-gather and reduce-scatter buffers, gradients,
activations, temporaries, optimizer state and inputs. It is independent of the sim's
tracker (another dispatch mode, its own storage bookkeeping, its own view of FSDP2), and
it runs on the same fake-mode model. Being private, it may change with any torch release:
this module is the one place that imports it.
"""

from __future__ import annotations

from torch import nn


def fsdp_memtracker_peak(fn, model: nn.Module, *, optimizer=None, inputs=()) -> dict[str, int]:
    """Run ``fn`` once under ``FSDPMemTracker``; its peak, by category, summed over devices.

    Args:
        fn: The work (one call).
        model: The root FSDP module.
        optimizer: Its state is filed as optimizer state.
        inputs: Tensors alive before the run that the tracker should count (it counts
            nothing it was not told of, apart from FSDP2's and the optimizer's tensors).

    Returns:
        Category name (``"Sharded Param"``, ``"All Gather"``, ...) -> bytes at the peak,
        and ``"Total"``.
    """
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker

    tracker = FSDPMemTracker(model, optimizer)
    tracker.track_inputs(tuple(inputs))
    with tracker:
        out = fn()
        del out
    totals: dict[str, int] = {}
    for snapshot in tracker.get_tracker_snapshot("peak").values():
        for key, value in snapshot.items():
            name = getattr(key, "value", key)
            totals[name] = totals.get(name, 0) + value
    return totals
