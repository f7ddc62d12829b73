"""Reading the values of small control tensors, also where a simulation has none.

The sharded selection reads a few collective results to decide what to do next
(batch counts, which statistics some rank saw, how many entries are trainable). The
sim (:mod:`fps_profile.sim.sharded`) runs one rank on fake tensors under a fake
process group, where no tensor has values and no collective runs; there every rank
is taken to be the simulated one, and the caller says what the read would then
give. The allocations stay those of the real run: only the read differs.
"""

from __future__ import annotations

import torch


def is_fake(t: torch.Tensor) -> bool:
    """Whether ``t`` is a fake tensor (no values: the sim)."""
    from torch._subclasses.fake_tensor import is_fake as _fake

    return _fake(t)


def read(t: torch.Tensor, assumed) -> list:
    """``t.tolist()``; ``assumed`` (what every rank being alike would give) where ``t`` is fake."""
    return list(assumed) if is_fake(t) else t.tolist()
