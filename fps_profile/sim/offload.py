"""Device and host memory under FSDP2's ``CPUOffloadPolicy`` (``--offload cpu``) on the sim.

The sim's fake tensors are all CPU tensors, so FSDP2's moves between the GPU and the host
(``.to(device)`` of a host shard, ``.to("cpu")`` of a reduced gradient) would be no-ops
that keep everything in one place. :class:`HostBytes` and :class:`HostMoves` put the two
memories back:

* **Where a new storage lives.** An operator whose tensor inputs all live on the host
  makes host tensors (the optimizer's state and step on host shards and gradients, the
  sparse step's trainable values, a gradient selector's scores of host gradients), as on
  a GPU, where they run on the CPU; any other operator, and every factory
  (``torch.empty``: FSDP2's all-gather and reduce-scatter buffers, activations), makes
  device tensors.
* **Moves**, made by FSDP2's own modules: ``Tensor.to`` with a device, called on a host
  tensor, copies it to the device (the host-to-device copy of each shard before its
  all-gather); ``.cpu()``, ``.to("cpu")`` and ``.pin_memory()`` of a device tensor copy it
  to the host (the sharded parameters at ``fully_shard``, each reduced shard gradient).
  Moves elsewhere stay what they are on the sim without offload.

Host tensors are counted apart (:attr:`HostBytes.peak`, the row's ``host_peak_bytes``,
exact bytes: the pinned allocator's power-of-two rounding is not modelled) and never on the
device. Only :mod:`fps_profile.sim.sharded` turns this on.
"""

from __future__ import annotations

import contextlib
import sys
import weakref

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

_FSDP = "torch.distributed.fsdp"


class HostBytes:
    """Live host bytes of one simulated rank.

    Attributes:
        current: Bytes live now.
        peak: Highest ``current``.
        forced: ``"host"`` or ``"device"``: where every storage made now lives; None: by its inputs.
    """

    def __init__(self) -> None:
        self.live: dict[int, int] = {}
        self.current = self.peak = 0
        self.forced: str | None = None
        self.op_on_host = False  # set around each operator by the tracker
        self._finalizers: list[weakref.finalize] = []

    def holds(self, t: torch.Tensor) -> bool:
        """Whether ``t``'s storage is on the host."""
        return t.untyped_storage()._cdata in self.live

    def inputs_on_host(self, args, kwargs, fake_mode) -> bool:
        """Whether the operator's fake tensor inputs (at least one) all live on the host."""
        fakes = [t for t in tree_leaves((args, kwargs)) if isinstance(t, FakeTensor) and t.fake_mode is fake_mode]
        return bool(fakes) and all(self.holds(t) for t in fakes)

    def claims(self, t: torch.Tensor) -> bool:
        """Count ``t`` here if it lives on the host (a known host storage, or a new one made now)."""
        storage = t.untyped_storage()
        key, nbytes = storage._cdata, storage.nbytes()
        if key in self.live:
            self.current += nbytes - self.live[key]
        elif self.forced == "host" or (self.forced is None and self.op_on_host):
            self.current += nbytes
            self._finalizers.append(weakref.finalize(storage, self._free, key))
        else:
            return False
        self.live[key] = nbytes
        self.peak = max(self.peak, self.current)
        return True

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def reset_peak(self) -> None:
        self.peak = self.current

    def close(self) -> None:
        for f in self._finalizers:
            f.detach()
        self._finalizers.clear()

    @contextlib.contextmanager
    def allocating(self, where: str):
        """Every storage made inside the block lives ``where`` (``"host"`` or ``"device"``)."""
        saved, self.forced = self.forced, where
        try:
            yield
        finally:
            self.forced = saved


def _device_and_dtype(args, kwargs):
    device = kwargs.get("device")
    dtype = kwargs.get("dtype")
    for a in args[1:]:
        if isinstance(a, (str, torch.device)) and device is None:
            device = a
        elif isinstance(a, torch.dtype) and dtype is None:
            dtype = a
    return device, dtype


def _called_by_fsdp() -> bool:
    frame = sys._getframe(2)  # 0: this function, 1: __torch_function__, 2: the caller
    return str(frame.f_globals.get("__name__", "")).startswith(_FSDP)


class HostMoves(TorchFunctionMode):
    """Turns FSDP2's device/host moves into copies between the two memories of :class:`HostBytes`.

    Only calls made by FSDP2's own modules move anything: ``.to(device)`` of a host tensor
    copies it to the device, ``.to(device)``/``.cpu()``/``.pin_memory()`` of a device tensor
    copies it to the host (on the sim every device is the CPU, so the direction is read from
    where the tensor lives).
    """

    def __init__(self, host: HostBytes) -> None:
        super().__init__()
        self.host = host

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        src = args[0] if args else None
        if isinstance(src, FakeTensor) and func in _MOVES and _called_by_fsdp():
            device, dtype = _device_and_dtype(args, kwargs) if func is torch.Tensor.to else ("cpu", None)
            on_host = self.host.holds(src)
            if device is not None and (func is torch.Tensor.to or not on_host):
                with self.host.allocating("device" if on_host else "host"):
                    return torch.Tensor.to(src, device="cpu", dtype=dtype or src.dtype, copy=True)
        return func(*args, **kwargs)


_MOVES = (torch.Tensor.to, torch.Tensor.cpu, torch.Tensor.pin_memory)
