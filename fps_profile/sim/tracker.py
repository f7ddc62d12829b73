"""Live bytes of fake tensors, counted as the target's allocator would count them.

:class:`SimTensorBytes` is :class:`~fps_profile.trackers.LiveTensorBytes`
(same storage tracking, same ``budget_bytes`` out-of-memory) restricted to the
fake tensors of one fake mode, with two CUDA additions:

* block sizes from :class:`~fps_profile.sim.allocator.CachingAllocator`
  instead of exact storage bytes;
* cuBLAS workspaces: PyTorch gives each cuBLAS handle (one per thread) on
  each stream a workspace through the caching allocator at its first matrix
  product, and keeps it. Forward matrix products run on the calling thread,
  backward ones on the autograd engine's device thread, so a phase with a
  backward pass holds two;
* the staging buffer and semaphores a CUDA reduction takes for the duration
  of its kernel (``reduction_gpu``, :mod:`fps_profile.sim.reductions`).

It also corrects one fake kernel whose output layout differs from both real
ones: ``native_layer_norm_backward`` returns the input gradient contiguous on
CPU and CUDA, the fake kernel with the output gradient's strides, after
which a reshape (e.g. PVT-v2's LayerNorm on transposed tokens into a Linear)
copies where the real run takes a view; and ``sparse_mask`` of a dense tensor, whose
fake kernel gives no values (the backward of a sparse COO tensor's values, e.g.
PEFT SHiRA's delta) where the real ones give one per entry of the mask.
"""

from __future__ import annotations

import weakref

import torch
from torch._subclasses.fake_tensor import FakeTensor

from fps_profile.sim.allocator import CachingAllocator
from fps_profile.sim.reductions import GpuShape, tensor_staging
from fps_profile.trackers.tensor import LiveTensorBytes

aten = torch.ops.aten
CUBLAS_OPS = frozenset({aten.mm, aten.addmm, aten.bmm, aten.baddbmm, aten.addbmm, aten.mv, aten.addmv,
                        aten.dot, aten.vdot, aten.addr, aten._addmm_activation, aten._scaled_mm})
# Reductions through ATen's gpu_reduce_kernel, and the position of their ``dim`` argument (None: all dims).
REDUCTIONS = {aten.linalg_vector_norm.default: 2, aten.sum.dim_IntList: 1, aten.mean.dim: 1, aten.sum.default: None}


_LITERALS = frozenset({aten.lift_fresh.default, aten.lift_fresh_copy.default})
WORKSPACE = "(cuBLAS workspace)"  # the holder of workspaces in a peak breakdown
# Stands for the new block of a storage resized in place while the old block is still held.
_RESIZING = -1
_STAGING = (-2, -3)  # pseudo storage keys of a reduction's staging buffer and semaphores


def _size(block) -> int:
    return block.size if block is not None else 0


class SimTensorBytes(LiveTensorBytes):
    """Context manager counting the fake tensors of ``fake_mode``.

    Args:
        fake_mode: Only tensors of this fake mode are counted.
        allocator: Count caching-allocator blocks (None: exact storage bytes).
        budget_bytes: Raise ``torch.OutOfMemoryError`` when live bytes exceed it.
        workspace_bytes: cuBLAS workspace per thread (0: none).
        label: Names the simulated device in out-of-memory messages.
        reduction_gpu: Count the scratch of CUDA reductions as on a GPU of this shape (None: not counted).

    Attributes:
        workspaces: ``"forward"`` / ``"backward"`` -> the workspace tensor, once created.
    """

    def __init__(self, fake_mode, *, allocator: CachingAllocator | None = None, budget_bytes: int | None = None,
                 workspace_bytes: int = 0, label: str = "sim", reduction_gpu: GpuShape | None = None) -> None:
        super().__init__("cpu", include_existing=False, budget_bytes=budget_bytes)
        self.fake_mode, self.allocator, self.label = fake_mode, allocator, label
        self.workspace_bytes = workspace_bytes
        self.reduction_gpu = reduction_gpu if allocator is not None else None
        self.workspaces: dict[str, torch.Tensor] = {}
        self._blocks: dict[int, object] = {}
        #: Count tensors made by ``torch.tensor(data)`` (``aten.lift_fresh``): True, or ``"existing"``: only those
        #: alive when the peak is reset (as a real CPU tracker finds them on entry, never when made), or False.
        self.count_literals: bool | str = True
        self._literals: list[weakref.ref] = []
        #: Host memory under CPU offload (:class:`fps_profile.sim.offload.HostBytes`): its tensors are not
        #: counted here. None: everything is on the device.
        self.host = None

    def track(self, t: torch.Tensor, check_budget: bool = True) -> None:
        if not isinstance(t, FakeTensor):  # a DTensor (FSDP2) is counted by its local shard, as on a real rank
            t = getattr(t, "_local_tensor", t)
        if not isinstance(t, FakeTensor) or t.fake_mode is not self.fake_mode:
            return
        if self.host is not None and t.layout is torch.strided and self.host.claims(t):
            return
        if self.allocator is None:
            return super().track(t, check_budget)
        if t.layout is not torch.strided:
            return
        storage = t.untyped_storage()
        key, nbytes = storage._cdata, storage.nbytes()
        old = self._live.get(key)
        if old == nbytes:
            return
        previous = self._blocks.get(key)
        block = self._blocks[key] = self.allocator.malloc(nbytes)
        self._live[key] = nbytes
        if old is None:
            self._finalizers.append(weakref.finalize(storage, self._free, key))
            if self.observer is not None:
                self.observer.added(key, _size(block), nbytes)
        else:  # resized in place: a new block, then the old one goes
            if self.observer is not None:  # both blocks are held for a moment
                self.observer.added(_RESIZING, _size(block), nbytes)
            self._sync(check_budget)
            if self.observer is not None:
                self.observer.freed(_RESIZING)
                self.observer.resized(key, _size(block), nbytes)
            self.allocator.free(previous)
        self._sync(check_budget)

    def _free(self, key: int) -> None:
        if self.allocator is None:
            return super()._free(key)
        if self.observer is not None and key in self._live:
            self.observer.freed(key)
        self._live.pop(key, None)
        self.allocator.free(self._blocks.pop(key, None))
        self.current = self.allocator.allocated

    def live_sizes(self, requested: bool = False) -> dict[int, int]:
        """Storage key -> bytes of its block (or, with ``requested``, that it asked for), for every live storage."""
        if self.allocator is None or requested:
            return dict(self._live)
        return {key: _size(block) for key, block in self._blocks.items()}

    def _sync(self, check_budget: bool) -> None:
        self.current = self.allocator.allocated
        if self.current > self.peak:
            self.peak = self.current
            if check_budget and self.budget_bytes is not None and self.current > self.budget_bytes:
                raise torch.OutOfMemoryError(
                    f"predicted out of memory on {self.label}: {self.current:,} bytes allocated, "
                    f"budget {self.budget_bytes:,} bytes")

    def reset_peak(self) -> None:
        for ref in self._literals:
            t = ref()
            if t is not None:
                self.track(t, check_budget=False)
        self._literals.clear()
        super().reset_peak()
        if self.host is not None:
            self.host.reset_peak()

    def workspace(self, thread: str) -> None:
        """Allocate the cuBLAS workspace of ``thread`` (``forward``/``backward``) unless it exists."""
        if self.workspace_bytes and thread not in self.workspaces:
            ws = torch.empty(self.workspace_bytes, dtype=torch.uint8)
            self.workspaces[thread] = ws
            self.track(ws)
            if self.observer is not None:
                self.observer.relabel(ws, "workspace", WORKSPACE)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _LITERALS and self.count_literals is not True:
            # torch.tensor(data): the real tensor made from Python data aliases into a fake one here,
            # where the real tracker sees no new storage (and on a GPU, without a device, it is a host tensor).
            out = func(*args, **(kwargs or {}))
            if self.count_literals == "existing":
                self._literals.append(weakref.ref(out))
            return out
        if self.workspace_bytes and func.overloadpacket in CUBLAS_OPS:
            self.workspace("backward" if torch._C._current_autograd_node() is not None else "forward")
        if func is aten.native_layer_norm_backward.default:
            func = _layer_norm_backward
        elif func is aten.sparse_mask.default:
            func = _sparse_mask
        on_host = self.host is not None and self.host.inputs_on_host(args, kwargs, self.fake_mode)
        if self.host is not None:
            self.host.op_on_host = on_host
        try:
            out = super().__torch_dispatch__(func, types, args, kwargs)
        finally:
            if self.host is not None:
                self.host.op_on_host = False
        if self.reduction_gpu is not None and func in REDUCTIONS and not on_host:
            self._reduction_scratch(func, args, kwargs or {})
        return out

    def _reduction_scratch(self, func, args, kwargs) -> None:
        """The staging buffer and semaphores of the reduction just run: allocated after its output, then freed."""
        x, pos = args[0], REDUCTIONS[func]
        if not isinstance(x, FakeTensor) or x.fake_mode is not self.fake_mode:
            return
        dims = kwargs.get("dim", args[pos] if pos is not None and len(args) > pos else None)
        staging = tensor_staging(x, dims, self.reduction_gpu)
        if staging.buffer_bytes:
            blocks = [self.allocator.malloc(staging.buffer_bytes), self.allocator.malloc(staging.semaphore_bytes)]
            if self.observer is not None:  # temporaries, held by whatever module reduces
                for key, (block, nbytes) in zip(_STAGING, zip(blocks, (staging.buffer_bytes,
                                                                         staging.semaphore_bytes))):
                    self.observer.added(key, _size(block), nbytes)
            self._sync(check_budget=True)
            if self.observer is not None:
                for key in _STAGING:
                    self.observer.freed(key)
            for block in blocks:
                self.allocator.free(block)
            self.current = self.allocator.allocated


def _layer_norm_backward(*args, **kwargs):
    """``native_layer_norm_backward`` with the input gradient contiguous, as the CPU and CUDA kernels make it."""
    grad_input, *rest = aten.native_layer_norm_backward.default(*args, **kwargs)
    if grad_input is not None and not grad_input.is_contiguous():
        grad_input = torch.empty_like(grad_input, memory_format=torch.contiguous_format)
    return (grad_input, *rest)


def _sparse_mask(t, mask):
    """``sparse_mask`` of a dense tensor with one value per entry of ``mask`` (the fake kernel makes
    none): new values, ``mask``'s indices, as the CPU and CUDA kernels give a dense ``t``'s."""
    out = aten.sparse_mask.default(t, mask)
    nnz = mask._nnz()
    if t.layout is not torch.strided or out._nnz() == nnz:
        return out
    values = t.new_empty((nnz, *t.shape[mask.sparse_dim():]))
    return aten._sparse_coo_tensor_with_dims_and_tensors.default(
        mask.sparse_dim(), mask.dense_dim(), list(mask.shape), mask._indices(), values,
        dtype=t.dtype, layout=torch.sparse_coo, device=t.device, is_coalesced=mask.is_coalesced())
