"""Device memory as the driver sees it (NVML, from the nvidia-ml-py package).

NVML's "used" figure covers the CUDA context, the caching allocator's reserved
pool and every other process on the GPU; it is sampled from a background
thread (every ``interval_s``) to catch the peak. The per-process figure is
optional: inside containers NVML reports host PIDs that may not match ours.
"""

from __future__ import annotations

import os
import threading


class NvmlSampler:
    """Background sampler of NVML used memory for one GPU.

    Args:
        index: GPU index as NVML numbers it (``CUDA_VISIBLE_DEVICES`` is honoured
            when it holds plain indices).
        interval_s: Sampling period.

    Attributes:
        available: False when NVML cannot be initialised (no driver): peaks stay None.
        peak_used: Highest device-wide used bytes seen, or None.
        peak_process: Highest bytes attributed to this process, or None.
    """

    def __init__(self, index: int = 0, interval_s: float = 0.01) -> None:
        self.interval_s = interval_s
        self.peak_used: int | None = None
        self.peak_process: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
            ids = [v for v in visible.split(",") if v.strip().isdigit()]
            nvml_index = int(ids[index]) if index < len(ids) else index
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(nvml_index)
            self.available = True
        except Exception:  # no NVIDIA driver or library: NVML figures are simply absent
            self.available = False

    def _sample(self) -> None:
        nv, h = self._nvml, self._handle
        used = nv.nvmlDeviceGetMemoryInfo(h).used
        self.peak_used = max(self.peak_used or 0, used)
        try:
            for proc in nv.nvmlDeviceGetComputeRunningProcesses(h):
                if proc.pid == os.getpid() and proc.usedGpuMemory is not None:
                    self.peak_process = max(self.peak_process or 0, proc.usedGpuMemory)
        except Exception:  # per-process queries are optional (containers, MIG)
            pass

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> NvmlSampler:
        if self.available:
            self.peak_used = self.peak_process = None
            self._stop.clear()
            self._sample()
            self._thread = threading.Thread(target=self._loop, name="nvml-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._sample()
