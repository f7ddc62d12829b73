"""A simulated device: fake tensors, a byte tracker, CUDA stand-ins, FLOP counting.

    with Simulator("h100") as sim:
        model = sim.model("vit_base_patch16_224", torch.float32)
        images, labels = sim.batch(model, 64, torch.float32)
        stats = sim.measure(phases.inference_fn(model, images))
    stats.peak_bytes, stats.flops, stats.time_floor_s

Everything created inside the ``with`` block is a fake tensor: shapes, dtypes
and storage sizes without memory or compute. The tracker is on from the
start, so parameters, inputs and optimizer state are counted from their
allocation, as the CUDA allocator sees them. :meth:`Simulator.measure`
follows the cuda backend's protocol: warm-up runs, then garbage collection,
``empty_cache``, a peak reset, and the measured run.
"""

from __future__ import annotations

import contextlib
import gc
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils._python_dispatch import _disable_current_modes

from fps_profile.sim import fake
from fps_profile.sim.allocator import CachingAllocator
from fps_profile.trackers.flops import FlopCount, time_floor
from fps_profile.sim.policy import cuda_behaviour
from fps_profile.sim.reductions import GpuShape
from fps_profile.measure.targets import Target, get_target
from fps_profile.sim.tracker import WORKSPACE, SimTensorBytes
from fps_profile.trackers.breakdown import PeakBreakdown


@dataclass
class SimStats:
    """What one measured run predicts.

    Attributes:
        peak_bytes: Peak allocated bytes (``max_memory_allocated`` on the target).
        flops: Floating-point operations of the run.
        time_floor_s: ``flops`` at the target's peak rates (None for the cpu target).
        flop_counts: FLOPs by ``(kind, dtype)``.
        breakdown: What the peak is made of, when :meth:`Simulator.measure` was given the model.
        highest_bytes: The most bytes allocated at any time in the simulator: building, warm-ups
            and the measured run (a card runs out at whichever needs most).
    """

    peak_bytes: int
    flops: int
    time_floor_s: float | None
    flop_counts: dict = field(default_factory=dict)
    breakdown: PeakBreakdown | None = None
    highest_bytes: int = 0


class Simulator:
    """Context manager for one simulated device.

    Args:
        target: A :class:`Target` or device string (``sim``, ``sim:h200``, ...).
        budget_bytes: Predicted out-of-memory (``torch.OutOfMemoryError``) beyond this.
        what: Names the simulated work in error messages (e.g. the model name).
        reduction_scratch: Count the staging buffers of CUDA reductions (:mod:`fps_profile.sim.reductions`,
            docs/sim.md); False leaves them out, as the simulator did before.
    """

    def __init__(self, target: Target | str = "sim", *, budget_bytes: int | None = None, what: str = "the model",
                 reduction_scratch: bool = True):
        self.target = get_target(target) if isinstance(target, str) else target
        self.what = what
        self.fake_mode = fake.new_fake_mode()
        self.allocator = CachingAllocator() if self.target.is_cuda else None
        self.tracker = SimTensorBytes(self.fake_mode, allocator=self.allocator, budget_bytes=budget_bytes,
                                      workspace_bytes=self.target.cublas_workspace_bytes,
                                      label=self.target.device_name(),
                                      reduction_gpu=GpuShape(self.target.sm_count)
                                      if reduction_scratch and self.target.is_cuda else None)
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Simulator:
        # Frees then follow reference counting alone (collections only where the cuda
        # backend collects), so the allocator sees the same sequence on every machine.
        if gc.isenabled():
            gc.disable()
            self._stack.callback(gc.enable)
        self._stack.enter_context(self.fake_mode)
        self._stack.enter_context(self.tracker)
        if self.target.is_cuda:
            self._stack.enter_context(cuda_behaviour(self.target.capability))
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    @contextlib.contextmanager
    def translating_errors(self):
        """Turn "needs tensor values" failures into a one-line :class:`UserError`."""
        try:
            yield
        except Exception as exc:
            err = fake.needs_values_error(exc, self.what)
            if err is not None:
                raise err from exc
            raise

    def model(self, name: str, dtype: torch.dtype = torch.float32, image_size: int | None = None, *,
              num_classes: int | None = None, check=None) -> nn.Module:
        """A randomly initialised timm model ``name`` (built for ``image_size``, with ``num_classes``
        classes where given), ``hf:`` language model or user factory's model, in fake storage;
        ``check(meta_model)`` runs on it before it gets storage (the weights' check)."""
        from fps_profile.models.hf import is_hf_name

        with _disable_current_modes():
            meta = fake.build_model(name, dtype, image_size, num_classes)
            if check is not None:
                check(meta)
        if is_hf_name(name):
            from fps_profile.sim.lm import unpacked_sequences

            self._stack.enter_context(unpacked_sequences())
        with self.translating_errors():
            return fake.materialize(meta)

    def module(self, module: nn.Module) -> nn.Module:
        """``module`` with fake storage: it is moved to the ``meta`` device (its values are dropped),
        then materialised through the tracker. Build it before entering the simulator."""
        with _disable_current_modes():
            meta = module.to("meta")
        return fake.materialize(meta)

    def batch(self, model: nn.Module, batch_size: int, dtype: torch.dtype, image_size: int | None = None,
              seq_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Fake images and labels for ``model`` (``image_size`` square, default the model's own);
        fake token ids ``[batch_size, seq_len]`` for a language model."""
        return fake.batch(model, batch_size, dtype, image_size, seq_len)

    def measure(self, fn, *, warmup: int = 0, workspaces: tuple[str, ...] = (), model: nn.Module | None = None,
                inputs=(), optimizer=None) -> SimStats:
        """Run ``fn`` ``warmup`` times, then once measured.

        Args:
            fn: The work (a phase callable).
            warmup: Untracked runs first (needed where a run leaves state, e.g. optimizer moments).
            workspaces: cuBLAS workspaces a warm-up would have created (``forward``,
                ``backward``), for runs measured without one.
            model: With it, the measured run also records what its peak is made of
                (:class:`~fps_profile.trackers.breakdown.PeakBreakdown`): ``inputs`` and
                ``optimizer`` name the batches and the optimizer whose state to recognise.
        """
        with self.translating_errors():
            for _ in range(warmup):
                out = fn()
                del out
            for thread in workspaces:
                self.tracker.workspace(thread)
            gc.collect()
            if self.allocator is not None:
                self.allocator.empty_cache()
            before = self.tracker.peak  # building and warm-ups, whose peak the reset forgets
            self.tracker.reset_peak()
            explained = None
            with contextlib.ExitStack() as stack:
                counter = stack.enter_context(FlopCount())
                if model is not None:
                    explained = stack.enter_context(PeakBreakdown(self.tracker, model, inputs=inputs,
                                                                  optimizer=optimizer))
                    for ws in self.tracker.workspaces.values():
                        explained.relabel(ws, "workspace", WORKSPACE)
                out = fn()
                del out
        counts = dict(counter.counts)
        return SimStats(peak_bytes=self.tracker.peak, flops=counter.total,
                        time_floor_s=time_floor(counter.counts, self.target.peak_flops), flop_counts=counts,
                        breakdown=explained, highest_bytes=max(before, self.tracker.peak))


def selector_passes(selector: str) -> tuple[str, ...]:
    """The passes ``selector`` runs (``forward``, ``backward``): the cuBLAS workspaces a warm-up would leave."""
    from fps_profile.selection.selectors import get

    cls = get(selector)
    return (("forward",) if cls.needs_data else ()) + (("backward",) if cls.needs_backward else ())
