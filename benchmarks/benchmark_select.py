"""Selection on small models on the CPU: wall time, and the process's peak RSS.

The timed work is the runner's ``select`` phase (:func:`fps_profile.measure.phases.select_fn`);
model and batch are built in ``setup``, outside the timing. ``peakmem_`` figures
are the benchmark process's RSS high-water mark, imports and setup included:
``peakmem_reference`` (which does nothing) shows that floor.
"""

from __future__ import annotations

import fps_profile  # noqa: F401  (imported here so that the reference includes it)
import timm  # noqa: F401
import torch

from .common import CPU_MODELS, CPU_SELECTORS, select_callable


class TimeSelect:
    """Seconds of one selection (batch 1, budget k=1) on the CPU."""

    params = (CPU_SELECTORS, CPU_MODELS)
    param_names = ["selector", "model"]
    number = 1
    repeat = (3, 10, 20.0)
    warmup_time = 0.0  # setup already ran the selection once
    timeout = 300

    def setup(self, selector, model):
        torch.set_num_threads(1)  # two shared cores: one thread keeps the timings comparable
        self.fn = select_callable(selector, model, 1)
        self.fn()

    def time_select(self, selector, model):
        self.fn()


class PeakMemSelect:
    """Peak RSS of a process that builds ``vit_tiny_patch16_224`` and runs one selection (batch 8)."""

    params = CPU_SELECTORS
    param_names = ["selector"]
    timeout = 300

    def peakmem_select(self, selector):
        select_callable(selector, "vit_tiny_patch16_224", 8)()


def peakmem_reference():
    """The floor of every ``peakmem_``: Python, torch, timm and fps_profile imported, nothing run."""
