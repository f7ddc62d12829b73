"""Device and host memory under FSDP2's ``CPUOffloadPolicy`` (``--offload cpu``) on the sim.

The sim's fake tensors are all CPU tensors, so FSDP2's moves between the GPU and the host
(``.to(device)`` of a host shard, ``.to("cpu")`` of a reduced gradient) would be no-ops
that keep everything in one place. :class:`HostBytes` and :func:`host_moves` put the two
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
device. Only :mod:`fps_profile.sim.sharded` turns this on (:func:`host_moves`, and the tracker's ``host``).
"""

from __future__ import annotations

import contextlib
import sys
import weakref
from collections.abc import Iterator

import torch
from torch._subclasses.fake_tensor import FakeTensor
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
        """Whether ``t``'s storage (a DTensor's local shard's) is on the host."""
        t = getattr(t, "_local_tensor", t)
        return t.untyped_storage()._cdata in self.live

    def inputs_on_host(self, args, kwargs, fake_mode) -> bool:
        """Whether the operator's fake tensor inputs (DTensors by their local shards; at least one) all live
        on the host."""
        leaves = (getattr(t, "_local_tensor", t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor))
        fakes = [t for t in leaves if isinstance(t, FakeTensor) and t.fake_mode is fake_mode]
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
    frame = sys._getframe(2)  # 0: this function, 1: the patched method, 2: its caller
    return str(frame.f_globals.get("__name__", "")).startswith(_FSDP)


@contextlib.contextmanager
def host_moves(host: HostBytes) -> Iterator[None]:
    """Inside the block, FSDP2's device/host moves copy between the two memories of ``host``.

    Only calls made by FSDP2's own modules move anything: ``.to(device)`` of a host tensor
    copies it to the device, ``.to(device)``/``.cpu()``/``.pin_memory()`` of a device tensor
    copies it to the host (on the sim every device is the CPU, so the direction is read from
    where the tensor lives). ``torch.Tensor``'s methods are patched rather than a torch-function
    mode used: FSDP2 moves reduced gradients inside the autograd engine, where modes are not active.
    """
    originals = {name: getattr(torch.Tensor, name) for name in _MOVES}

    def patched(name):
        original = originals[name]

        def method(self, *args, **kwargs):
            if isinstance(self, FakeTensor) and _called_by_fsdp():
                device, dtype = _device_and_dtype((self, *args), kwargs) if name == "to" else ("cpu", None)
                on_host = host.holds(self)
                if device is not None and (name == "to" or not on_host):
                    with host.allocating("device" if on_host else "host"):
                        return originals["to"](self, device="cpu", dtype=dtype or self.dtype, copy=True)
            return original(self, *args, **kwargs)

        return method

    for name in _MOVES:
        setattr(torch.Tensor, name, patched(name))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


_MOVES = ("to", "cpu", "pin_memory")
