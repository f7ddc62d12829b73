"""``--device sim``: predicted GPU peak memory and FLOPs, without a GPU.

The selector, inference and train-step code of :mod:`fps_profile.measure.phases`
runs on fake tensors (``torch._subclasses.fake_tensor``), which carry shapes,
dtypes and storage sizes but no data, while a tracker counts live storage
the way the CUDA caching allocator counts blocks. A ViT-H/14 at batch 512
costs seconds and little host memory. See ``docs/sim.md`` for what is
modelled and what is not.

Public API: :class:`Simulator`, :func:`get_target`, :data:`TARGETS`; the ``sim`` entry of
the backend table is :class:`fps_profile.sim.backend.SimBackend`.
"""

from __future__ import annotations

from fps_profile.measure.targets import TARGETS, Target, get_target
from fps_profile.sim.session import Simulator, SimStats

__all__ = ["TARGETS", "SimStats", "Simulator", "Target", "get_target"]
