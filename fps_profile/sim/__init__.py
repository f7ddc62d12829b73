"""``--device sim``: predicted GPU peak memory and FLOPs, without a GPU.

The selector, inference and train-step code of :mod:`fps_profile.phases`
runs on fake tensors (``torch._subclasses.fake_tensor``), which carry shapes,
dtypes and storage sizes but no data, while a tracker counts live storage
the way the CUDA caching allocator counts blocks. A ViT-H/14 at batch 512
costs seconds and little host memory. See ``docs/sim.md`` for what is
modelled and what is not.

Public API: :func:`measure_sim` (the runner's ``sim`` backend),
:func:`check_sim_device`, :class:`Simulator`, :func:`get_target`, :data:`TARGETS`.
"""

from __future__ import annotations

from fps_profile.sim.run import check_sim_device, measure_sim
from fps_profile.sim.session import Simulator, SimStats
from fps_profile.sim.targets import TARGETS, Target, get_target

__all__ = ["TARGETS", "SimStats", "Simulator", "Target", "check_sim_device", "get_target", "measure_sim"]
