"""Peak allocated bytes of a selection (and of the inference floor), per selector x model x batch.

``SimPeakMemory`` is deterministic: the ``sim`` backend predicts the CUDA
allocator's peak without a GPU, so it runs everywhere and any change is real.
``CudaPeakMemory`` is the allocator's ``max_memory_allocated`` on a real GPU,
skipped where there is none. ``SimPeakBreakdown`` splits the sim peak into its
categories (``peak_breakdown_bytes``).
"""

from __future__ import annotations

from .common import BATCHES, CATEGORIES, MODELS, WITH_FLOOR, measure_row, require_cuda, require_sim, skip


class SimPeakMemory:
    """Predicted peak of live tensor bytes on the sim device (a CUDA GPU, ``sim``)."""

    params = (WITH_FLOOR, MODELS, BATCHES)
    param_names = ["selector", "model", "batch_size"]
    unit = "bytes"
    timeout = 600

    def setup(self, selector, model, batch_size):
        require_sim()

    def track_peak_allocated(self, selector, model, batch_size):
        return measure_row(selector, model, batch_size, "sim").peak_allocated_bytes


class CudaPeakMemory:
    """``torch.cuda.max_memory_allocated`` of the measured run on a real GPU."""

    params = (WITH_FLOOR, MODELS, BATCHES)
    param_names = ["selector", "model", "batch_size"]
    unit = "bytes"
    timeout = 600

    def setup(self, selector, model, batch_size):
        require_cuda()

    def track_peak_allocated(self, selector, model, batch_size):
        return measure_row(selector, model, batch_size, "cuda", repeats=1).peak_allocated_bytes


class SimPeakBreakdown:
    """Bytes of each category at the predicted peak (sim), for the grid of :class:`SimPeakMemory`.

    Tracks what the peak is made of (weights, activations, gradients, ...), so bytes moving
    from one category to another show up even when the total holds. The grid is measured
    once per run (``setup_cache``); each category of each cell is then one number.
    """

    params = (WITH_FLOOR, MODELS, BATCHES, list(CATEGORIES))
    param_names = ["selector", "model", "batch_size", "category"]
    unit = "bytes"
    timeout = 1200

    def setup_cache(self):
        try:
            require_sim()
        except NotImplementedError:
            return None
        return {(s, m, b): getattr(measure_row(s, m, b, "sim"), "peak_breakdown_bytes", None)
                for s in WITH_FLOOR for m in MODELS for b in BATCHES}

    def setup(self, cache, selector, model, batch_size, category):
        if not cache or cache.get((selector, model, batch_size)) is None:
            skip("no peak breakdown in this commit")

    def track_peak_category(self, cache, selector, model, batch_size, category):
        return cache[(selector, model, batch_size)].get(category, 0)
