"""Peak allocated bytes of a selection (and of the inference floor), per selector x model x batch.

``SimPeakMemory`` is deterministic: the ``sim`` backend predicts the CUDA
allocator's peak without a GPU, so it runs everywhere and any change is real.
``CudaPeakMemory`` is the allocator's ``max_memory_allocated`` on a real GPU,
skipped where there is none.
"""

from __future__ import annotations

from .common import BATCHES, MODELS, WITH_FLOOR, measure_row, require_cuda, require_sim


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
