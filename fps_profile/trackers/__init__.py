"""Memory and time trackers, one per backend.

* :class:`LiveTensorBytes` - exact live tensor bytes (``cpu``; fake CUDA for ``sim``);
* :class:`CudaAllocatorPeak` - the caching allocator's peaks (``cuda``);
* :class:`NvmlSampler` - device memory used, sampled from NVML (``cuda``);
* :class:`RssPeak` - the process's resident-set high-water mark (every backend);
* :func:`time_repeats` - warm-up, timed repeats around device synchronisation;
* :mod:`~fps_profile.trackers.breakdown` - what a live-tensor tracker's peak is made of
  (categories, phase, holders), imported on its own: ``from fps_profile.trackers import breakdown``.
"""

from fps_profile.trackers.cuda import CudaAllocatorPeak, limit_memory
from fps_profile.trackers.nvml import NvmlSampler
from fps_profile.trackers.rss import RssPeak, rss_high_water
from fps_profile.trackers.tensor import LiveTensorBytes
from fps_profile.trackers.timer import median, time_repeats

__all__ = ["CudaAllocatorPeak", "LiveTensorBytes", "NvmlSampler", "RssPeak", "limit_memory", "median",
           "rss_high_water", "time_repeats"]
