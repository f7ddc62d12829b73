"""Simulated devices: what ``sim:<target>`` stands for.

A target names the GPU whose memory and speed limits a ``sim`` row is read
against: its memory (the largest budget that can fit), its datasheet peak
rates (the time floor), its cuBLAS workspace (allocated through the caching
allocator, so part of ``max_memory_allocated``) and its compute capability
(which fused attention kernels it can run). The ``cpu`` target is the CPU
backend itself, with exact storage bytes: the sim's self-check against
:class:`~fps_profile.trackers.LiveTensorBytes` on a real CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fps_profile.errors import did_you_mean

TFLOPS = 1e12
MIB = 1 << 20

# PyTorch's default cuBLAS workspace (aten/src/ATen/cuda/CublasHandlePool.cpp,
# CUBLAS_WORKSPACE_CONFIG unset): ":4096:8" on Hopper and newer, ":4096:2:16:8" before.
WORKSPACE_SM90 = 4096 * 1024 * 8
WORKSPACE_SM80 = 4096 * 1024 * 2 + 16 * 1024 * 8


@dataclass(frozen=True)
class Target:
    """One simulated device.

    Attributes:
        name: Short name, as in ``sim:<name>``.
        description: What it is, for the row's ``env``.
        backend: ``"cuda"`` (model the CUDA backend's choices and allocator) or
            ``"cpu"`` (the CPU backend's own choices, exact storage bytes).
        memory_bytes: Board memory as ``nvidia-smi`` reports it (None for ``cpu``).
        peak_flops: Dense datasheet peak, FLOP/s, by math mode: ``float32``
            (CUDA cores), ``tf32``, ``bfloat16`` and ``float16`` (tensor cores).
        cublas_workspace_bytes: Workspace of one cuBLAS handle on one stream.
        capability: CUDA compute capability ``(major, minor)``.
        sm_count: Streaming multiprocessors (sets how CUDA reductions are split, see
            :mod:`fps_profile.sim.reductions`).
    """

    name: str
    description: str
    backend: str = "cuda"
    memory_bytes: int | None = None
    peak_flops: dict[str, float] = field(default_factory=dict)
    cublas_workspace_bytes: int = 0
    capability: tuple[int, int] = (0, 0)
    sm_count: int = 0

    @property
    def is_cuda(self) -> bool:
        return self.backend == "cuda"

    def device_name(self) -> str:
        """The row's device string for this target."""
        return f"sim:{self.name}"


_HOPPER_RATES = {"float32": 67 * TFLOPS, "tf32": 494.7 * TFLOPS, "bfloat16": 989.4 * TFLOPS,
                 "float16": 989.4 * TFLOPS}

TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("h100", "NVIDIA H100 SXM5 80GB (simulated)", memory_bytes=81559 * MIB,
               peak_flops=_HOPPER_RATES, cublas_workspace_bytes=WORKSPACE_SM90, capability=(9, 0),
               sm_count=132),
        Target("h200", "NVIDIA H200 SXM 141GB (simulated)", memory_bytes=143771 * MIB,
               peak_flops=_HOPPER_RATES, cublas_workspace_bytes=WORKSPACE_SM90, capability=(9, 0),
               sm_count=132),
        Target("a100", "NVIDIA A100 SXM4 80GB (simulated)", memory_bytes=81920 * MIB,
               peak_flops={"float32": 19.5 * TFLOPS, "tf32": 156 * TFLOPS, "bfloat16": 312 * TFLOPS,
                           "float16": 312 * TFLOPS},
               cublas_workspace_bytes=WORKSPACE_SM80, capability=(8, 0), sm_count=108),
        Target("cpu", "the CPU backend under fake tensors (exact storage bytes)", backend="cpu"),
    )
}
DEFAULT_TARGET = "h100"


def get_target(device: str) -> Target:
    """The target of a device string ``sim`` (H100) or ``sim:<target>``.

    Raises:
        UserError: Not a ``sim`` device, or an unknown target (with suggestions).
    """
    kind, _, name = device.partition(":")
    if kind != "sim":
        raise did_you_mean(device, ["sim"] + [f"sim:{n}" for n in TARGETS], "sim device")
    name = name or DEFAULT_TARGET
    if name not in TARGETS:
        raise did_you_mean(name, TARGETS, "sim target")
    return TARGETS[name]


def target_for_device_name(name: str | None) -> Target | None:
    """The CUDA target whose peak rates apply to a real GPU called ``name`` (e.g. ``"NVIDIA H100 80GB HBM3"``)."""
    text = (name or "").upper()
    for key in ("H200", "H100", "A100"):
        if key in text:
            return TARGETS[key.lower()]
    return None
