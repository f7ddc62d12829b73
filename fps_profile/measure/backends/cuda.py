"""The ``cuda[:N]`` backend: the caching allocator's peaks and NVML in the measured run; FLOPs and the
breakdown in extra runs afterwards (any dispatch mode changes eager choices on CUDA)."""

from __future__ import annotations

from fps_profile.errors import UserError
from fps_profile.measure.backends.device import DeviceBackend


class CudaBackend(DeviceBackend):
    """Measures on an NVIDIA GPU."""

    name = "cuda"

    def check(self, device: str, *, local: bool = True) -> None:
        import torch

        try:
            index = torch.device(device).index
        except RuntimeError:
            raise UserError(f"unknown device {device!r} (use cpu, cuda, cuda:N or sim)") from None
        if not local:
            return
        if not torch.cuda.is_available():
            raise UserError(f"device {device!r} asked for, but no CUDA GPU is available here "
                            "(use --device cpu, or --device sim to predict GPU memory)")
        if index is not None and index >= torch.cuda.device_count():
            raise UserError(f"device {device!r} does not exist ({torch.cuda.device_count()} GPU(s) here)")

    def env(self, device: str) -> dict:
        import torch

        from fps_profile.measure.env import nvml_driver

        if not torch.cuda.is_available():
            return {}
        idx = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(idx)
        uuid = getattr(props, "uuid", None)
        return {"device_name": torch.cuda.get_device_name(idx), "cuda": torch.version.cuda,
                "driver": nvml_driver(), "device_memory_bytes": props.total_memory,
                "device_uuid": str(uuid) if uuid is not None else None}  # which physical GPU, on a cluster

    def memory_bytes(self, device: str) -> int | None:
        import torch

        if not torch.cuda.is_available():
            return None
        return torch.cuda.get_device_properties(torch.device(device)).total_memory

    def gpus(self, device: str, world_size: int = 1) -> int:
        return max(1, int(world_size or 1))  # one GPU per rank

    def limit(self, device, memory_budget) -> None:
        from fps_profile.trackers import limit_memory

        if memory_budget is not None:
            limit_memory(device, memory_budget)

    def train_mask(self, model, batches, cell, budget, options):
        import torch

        mask = super().train_mask(model, batches, cell, budget, options)
        torch.cuda.empty_cache()
        return mask

    def trackers(self, stack, device, cell, model, batches, optimizer):
        from fps_profile.trackers import CudaAllocatorPeak, NvmlSampler

        cuda_peak = stack.enter_context(CudaAllocatorPeak(device))
        nvml = stack.enter_context(NvmlSampler(device.index or 0))

        def fill(row) -> None:
            row.peak_allocated_bytes, row.peak_reserved_bytes = cuda_peak.peak_allocated, cuda_peak.peak_reserved
            row.nvml_peak_used_bytes, row.nvml_process_peak_bytes = nvml.peak_used, nvml.peak_process

        return fill

    def after(self, fn, device, model, batches, optimizer, row) -> None:
        import torch

        from fps_profile.measure.runner import one_line
        from fps_profile.measure.targets import target_for_device_name
        from fps_profile.trackers.cuda import record_extra_run
        from fps_profile.trackers.cuda import round_size
        from fps_profile.trackers.flops import FlopCount, time_floor

        # Any active dispatch mode changes eager choices (e.g. gradients accumulate out of
        # place), so on CUDA the FLOPs come from one more run, after everything is measured.
        with FlopCount() as flop_count:
            fn()
        row.flops = flop_count.total
        target = target_for_device_name(torch.cuda.get_device_name(device))
        row.time_floor_s = time_floor(flop_count.counts, target.peak_flops) if target else None
        # The breakdown needs a dispatch mode too: one more, labelled run, whose failure leaves the row as it is.
        try:
            record_extra_run(fn, model, inputs=batches, optimizer=optimizer, round_bytes=round_size).fill(row, "extra")
        except Exception as exc:  # noqa: BLE001
            row.env["breakdown_error"] = one_line(exc)
