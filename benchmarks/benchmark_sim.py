"""The sim backend: its own speed and host memory, its predictions, and their error on a real GPU.

* ``SimSpeed``: wall time and host RSS of one sim cell (goal: ViT-B/16 under
  5 s, ViT-H/14 under 15 s, RSS under 2 GiB, on a 2-core machine);
* ``SimReference``: predicted peak of the H200 reference points of
  ``measurement.md`` (ViT-B/16, batch 64, float32), and the error against them;
* ``SimAccuracy``: error of the prediction against ``max_memory_allocated``
  measured on the GPU at hand (skipped without one): the accuracy goal is 3%
  median, 8% worst, over ViT-Ti/S/B/L/H at batch 1..128.

``python -m benchmarks.benchmark_sim`` prints the reference table of ``docs/sim.md``.
"""

from __future__ import annotations

MODELS = ["vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224", "vit_large_patch16_224",
          "vit_huge_patch14_224"]
# What each series runs: the inference floor, FPS, GPS with a CE loss on one view, GPS as published.
WHAT = {
    "inference": {"phase": "inference"},
    "fps": {"phase": "select", "selector": "fps"},
    "gps-ce": {"phase": "select", "selector": "gps", "options": (("loss", "ce"), ("views", 1))},
    "gps": {"phase": "select", "selector": "gps"},
    "train_step": {"phase": "train_step"},
    "sparse_step": {"phase": "train_step", "selector": "fps"},
}
GIB = 1 << 30
# measurement.md: H200, torch 2.11, timm ViT-B/16, random init, float32, batch 64, max_memory_allocated.
H200_REFERENCE = {"inference": 0.82 * GIB, "fps": 0.84 * GIB, "gps-ce": 7.62 * GIB, "gps": 14.97 * GIB}


def _skip(reason: str):
    raise NotImplementedError(reason)  # asv's way to skip from setup


def _require_sim() -> None:
    try:
        import fps_profile.sim  # noqa: F401
    except ImportError:
        _skip("no sim backend in this commit")


def sim_row(model: str, batch: int, what: str, device: str = "sim:h100", *, fits: bool = True):
    """One measured row of ``what`` (a key of :data:`WHAT`); fails unless its status is ``ok`` (or, with
    ``fits=False``, a predicted ``oom``: a run above the card, fully predicted, as a timing needs)."""
    from fps_profile.rows.cell import Cell
    from fps_profile.measure.runner import measure

    row = measure(Cell(model=model, batch_size=batch, device=device, **WHAT[what]))
    if row.status != "ok" and (fits or row.status != "oom" or row.peak_allocated_bytes is None):
        raise RuntimeError(f"{model} b={batch} {what} on {device}: {row.status}: {row.error}")
    return row


class SimSpeed:
    """Wall time and host peak RSS of one sim cell (in this process; imports done in setup)."""

    params = (["vit_base_patch16_224", "vit_huge_patch14_224"], [64, 512],
              ["inference", "gps", "train_step", "sparse_step"])
    param_names = ["model", "batch_size", "what"]
    number = 1
    repeat = 1
    warmup_time = 0
    timeout = 600

    def setup(self, model, batch_size, what):
        _require_sim()
        sim_row("test_vit", 1, "inference")  # imports and first-call set-up outside the timing

    def time_cell(self, model, batch_size, what):
        sim_row(model, batch_size, what, fits=False)  # ViT-H/b=512 GPS needs more than the H100 holds

    def peakmem_cell(self, model, batch_size, what):
        sim_row(model, batch_size, what, fits=False)


class SimReference:
    """Predicted ``max_memory_allocated`` of the H200 reference points (bytes)."""

    params = (list(H200_REFERENCE),)
    param_names = ["what"]
    unit = "bytes"
    timeout = 600

    def setup(self, what):
        _require_sim()

    def track_predicted_peak(self, what):
        return sim_row("vit_base_patch16_224", 64, what, "sim:h200").peak_allocated_bytes


class SimReferenceError:
    """Signed error of the prediction against the H200 reference points (percent)."""

    params = (list(H200_REFERENCE),)
    param_names = ["what"]
    unit = "percent"
    timeout = 600

    def setup(self, what):
        _require_sim()

    def track_error_percent(self, what):
        peak = sim_row("vit_base_patch16_224", 64, what, "sim:h200").peak_allocated_bytes
        return 100.0 * (peak - H200_REFERENCE[what]) / H200_REFERENCE[what]


class SimAccuracy:
    """Signed error (percent) of the sim's peak against the real GPU's, per model, batch and phase."""

    params = (MODELS, [1, 8, 32, 128], ["inference", "fps", "gps"])
    param_names = ["model", "batch_size", "what"]
    unit = "percent"
    timeout = 900

    def setup(self, model, batch_size, what):
        import torch

        _require_sim()
        if not torch.cuda.is_available():
            _skip("no CUDA GPU")
        from fps_profile.measure.targets import target_for_device_name

        target = target_for_device_name(torch.cuda.get_device_name())
        if target is None:
            _skip(f"no sim target for {torch.cuda.get_device_name()}")
        self.sim_device = target.device_name()

    def track_error_percent(self, model, batch_size, what):
        from fps_profile.run.isolation import run_isolated
        from fps_profile.rows.cell import Cell

        real = run_isolated(Cell(model=model, batch_size=batch_size, device="cuda", repeats=1, **WHAT[what]))
        if real.status != "ok":
            raise RuntimeError(f"cuda: {real.status}: {real.error}")
        peak = sim_row(model, batch_size, what, self.sim_device).peak_allocated_bytes
        return 100.0 * (peak - real.peak_allocated_bytes) / real.peak_allocated_bytes


def reference_table() -> str:
    """The predicted-vs-reference table (markdown)."""
    lines = ["| ViT-B/16, batch 64, float32 | H200 reference | sim:h200 predicted | error |",
             "| --- | --- | --- | --- |"]
    names = {"inference": "no_grad forward (inference floor)", "fps": "FPS selection",
             "gps-ce": "GPS-style CE loss, one view", "gps": "GPS, two views + SupCon"}
    for what, ref in H200_REFERENCE.items():
        peak = sim_row("vit_base_patch16_224", 64, what, "sim:h200").peak_allocated_bytes
        lines.append(f"| {names[what]} | {ref / GIB:.2f} GiB | {peak / GIB:.3f} GiB | "
                     f"{100 * (peak - ref) / ref:+.1f}% |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference_table())
