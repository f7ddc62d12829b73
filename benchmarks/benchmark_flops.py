"""FLOPs of one selection per selector (and of the inference floor), from the sim backend."""

from __future__ import annotations

from .common import WITH_FLOOR, measure_row, require_sim


class SimFlops:
    """Floating-point operations counted by the sim backend (deterministic)."""

    params = (WITH_FLOOR, ["vit_tiny_patch16_224", "vit_base_patch16_224"])
    param_names = ["selector", "model"]
    unit = "FLOPs"
    timeout = 600

    def setup(self, selector, model):
        require_sim()

    def track_flops(self, selector, model):
        return measure_row(selector, model, 8, "sim").flops
