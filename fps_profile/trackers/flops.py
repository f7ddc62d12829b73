"""Floating-point operations of a run, and the time floor they imply on a device.

FLOPs are counted with the formulas of :mod:`torch.utils.flop_counter` (the
registry ``FlopCounterMode`` uses: matrix products, convolutions and fused
attention, forward and backward; element-wise work is not counted), plus the
CPU flash-attention kernel, which that registry lacks. Counts are kept per
(kind, dtype) so the time floor can divide each by the rate its kernels
run at on the target:

* float32 matrix products: the FP32 (CUDA-core) rate, since PyTorch leaves
  ``torch.backends.cuda.matmul.allow_tf32`` off;
* float32 convolutions and fused attention: the TF32 tensor-core rate
  (cuDNN allows TF32 by default; memory-efficient attention uses tensor cores
  for float32 on sm80+), a lower bound on their time;
* bfloat16 / float16: the dense tensor-core rate.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils import flop_counter
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten


def _shape(t):
    return tuple(t.shape) if isinstance(t, torch.Tensor) else t


def _cpu_flash(query, key, value, *args, out_val=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(_shape(query), _shape(key), _shape(value))


def _cpu_flash_backward(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(_shape(grad_out), _shape(query), _shape(key), _shape(value))


FORMULAS = dict(flop_counter.flop_registry)
FORMULAS[aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_flash
FORMULAS[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _cpu_flash_backward

_CONV = {aten.convolution, aten._convolution, aten.convolution_backward, aten.cudnn_convolution,
         aten._slow_conv2d_forward, aten.convolution_overrideable}


def _kind(packet) -> str:
    if packet in _CONV:
        return "conv"
    name = str(packet)
    return "attention" if "attention" in name else "matmul"


class FlopCount(TorchDispatchMode):
    """Dispatch mode counting FLOPs of every operator that runs inside it.

    Works on real and fake tensors alike (the formulas read shapes only).

    Attributes:
        counts: ``(kind, dtype name) -> FLOPs``; kind is ``matmul``, ``conv`` or ``attention``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[tuple[str, str]] = Counter()

    @property
    def total(self) -> int:
        """FLOPs of everything counted."""
        return int(sum(self.counts.values()))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = FORMULAS.get(func.overloadpacket)
        if formula is not None:
            first = next((a for a in args if isinstance(a, torch.Tensor)), None)
            dtype = str(first.dtype).removeprefix("torch.") if first is not None else "float32"
            self.counts[(_kind(func.overloadpacket), dtype)] += int(formula(*args, **kwargs, out_val=out))
        return out


def time_floor(counts: Counter, peak_flops: dict[str, float]) -> float | None:
    """Seconds the counted work needs at least at ``peak_flops`` (None without rates).

    Args:
        counts: :attr:`FlopCount.counts`.
        peak_flops: Peak rate by math mode (:attr:`fps_profile.measure.targets.Target.peak_flops`).
    """
    if not peak_flops:
        return None
    seconds = 0.0
    for (kind, dtype), n in counts.items():
        mode = dtype
        if dtype == "float32" and kind != "matmul":
            mode = "tf32"
        seconds += n / peak_flops.get(mode, peak_flops["float32"])
    return seconds
