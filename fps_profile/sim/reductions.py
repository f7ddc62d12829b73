"""Scratch memory of CUDA reductions: the staging buffer of ATen's ``gpu_reduce_kernel``.

A reduction (``sum``, ``mean``, ``linalg.vector_norm``, ...) on CUDA runs through
``gpu_reduce_kernel`` (``aten/src/ATen/native/cuda/Reduce.cuh``). When each output
has many inputs and there are few outputs, ``setReduceConfig`` splits every
output's inputs over several thread blocks (``ctas_per_output``), and the blocks
combine their partial results in global memory: ``gpu_reduce_kernel`` takes a
staging buffer of ``ReduceConfig::global_memory_size()`` bytes and a semaphore
array of ``semaphore_size()`` bytes from the caching allocator for the duration
of the kernel, so they count in ``max_memory_allocated``.

For a reduction over the leading (token) dimensions of a ``[tokens, C]``
activation, as FPS and Wanda's statistics and a linear layer's bias gradient
are, the buffer is ``4 * C * ctas_per_output * 32 * 4`` bytes: up to twice the
float32 activation itself. :func:`staging_bytes` replays the launch
configuration for a strided input; see docs/sim.md for the sources and what
the simulator does with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MAX_VALUES_PER_THREAD = 256
MIN_VALUES_PER_THREAD = 16
WARP = 32


@dataclass(frozen=True)
class GpuShape:
    """What the launch configuration depends on: ``cudaDeviceProp`` fields."""

    sm_count: int
    max_threads_per_sm: int = 2048

    @classmethod
    def of(cls, device: torch.device | int | None = None) -> GpuShape:
        """The shape of a real CUDA device."""
        props = torch.cuda.get_device_properties(device if device is not None else torch.cuda.current_device())
        return cls(props.multi_processor_count, props.max_threads_per_multi_processor)


@dataclass(frozen=True)
class Staging:
    """The scratch one reduction takes.

    Attributes:
        buffer_bytes: ``global_memory_size()`` (0 without a global reduction).
        semaphore_bytes: ``semaphore_size()``.
        ctas_per_output: Thread blocks per output.
    """

    buffer_bytes: int
    semaphore_bytes: int
    ctas_per_output: int


def _iterator_dims(shape, strides, reduce_dims) -> tuple[list[int], list[int], int]:
    """TensorIterator's view of a reduction: sizes and input strides, reduced dims first, coalesced.

    ``reorder_dimensions`` puts reduced dimensions first, each group by ascending
    input stride; ``coalesce_dimensions`` merges neighbours that are contiguous
    with each other in the input (and, for output dimensions, in the output).
    """
    red = set(reduce_dims)
    dims = [d for d in range(len(shape)) if shape[d] != 1]
    order = sorted((d for d in dims if d in red), key=lambda d: strides[d]) + \
        sorted((d for d in dims if d not in red), key=lambda d: strides[d])
    sizes, strd, kinds = [], [], []
    for d in order:
        if sizes and kinds[-1] == (d in red) and strd[-1] * sizes[-1] == strides[d]:
            sizes[-1] *= shape[d]
            continue
        sizes.append(shape[d])
        strd.append(strides[d])
        kinds.append(d in red)
    return sizes, strd, sum(kinds)


def _output_vec_size(sizes, strides, n_reduce: int, offset: int) -> int:
    """``get_output_vec_size``: 4, 2 or 1 by the alignment of the input and its non-output strides."""
    vec = 4
    for n in (offset, sizes[n_reduce], *(s for i, s in enumerate(strides) if i != n_reduce)):
        while n % vec:
            vec //= 2
    return vec


def _last_pow2(n: int) -> int:
    return max(1, 1 << (int(n).bit_length() - 1))


def staging_bytes(shape, strides, reduce_dims, *, elem_size: int, acc_size: int = 4, offset: int = 0,
                  gpu: GpuShape) -> Staging:
    """The scratch ``gpu_reduce_kernel`` allocates for one reduction.

    Args:
        shape: Input sizes.
        strides: Input strides, in elements.
        reduce_dims: Dimensions reduced (all of them for a full reduction).
        elem_size: Bytes per input element (``scalar_t``).
        acc_size: Bytes of the accumulator (``arg_t``: 4 for float32/bfloat16/float16 inputs).
        offset: The input's storage offset, in elements (its alignment).
        gpu: The device's SM count and threads per SM.

    Inputs of 2**31 elements or more are split by ATen into sub-reductions; they
    are not modelled (the result is that of one reduction over the whole).
    """
    numel = math.prod(shape)
    red = [d % len(shape) for d in reduce_dims] if len(shape) else []
    if numel == 0 or all(shape[d] == 1 for d in red):
        return Staging(0, 0, 1)
    sizes, strd, n_red = _iterator_dims(shape, strides, red)
    num_outputs = math.prod(sizes[n_red:])
    num_inputs = numel // num_outputs
    on_fastest = n_red == len(sizes) or strd[0] < strd[n_red]
    dim0, dim1 = (num_inputs, num_outputs) if on_fastest else (num_outputs, num_inputs)
    fastest = strd[0] if on_fastest else strd[n_red]
    out_vec = 1
    if fastest == 1:
        if on_fastest and dim0 >= 128 and n_red == 1:
            dim0 //= 4  # vectorised loads along the input
        elif not on_fastest:
            out_vec = _output_vec_size(sizes, strd, n_red, offset)
            dim0 //= out_vec
    max_threads = 512 // out_vec
    d0 = _last_pow2(dim0) if dim0 < max_threads else max_threads
    d1 = _last_pow2(dim1) if dim1 < max_threads else max_threads
    width = min(d0, WARP)
    height = min(d1, max_threads // width)
    width = min(d0, max_threads // height)
    step_in = step_out = 1
    if on_fastest:
        step_in *= width
    else:
        step_out *= width
    split_warps = -(-num_inputs // step_in) >= min(height * 16, MAX_VALUES_PER_THREAD)
    if split_warps:
        step_in *= height
    else:
        step_out *= height
    per_thread = -(-num_inputs // step_in)
    target = gpu.sm_count * (gpu.max_threads_per_sm // (width * height))
    grid_x = -(-(num_outputs // out_vec) // step_out)
    ctas = 1
    if split_warps and per_thread >= MAX_VALUES_PER_THREAD and grid_x <= target:
        ctas = max(min(-(-target // grid_x), -(-per_thread // MIN_VALUES_PER_THREAD)),
                   -(-per_thread // MAX_VALUES_PER_THREAD))
    if ctas <= 1:
        return Staging(0, 0, 1)
    size = acc_size * num_outputs * ctas * (1 if on_fastest else width * out_vec)
    return Staging(size, 4 * grid_x, ctas)


def tensor_staging(x: torch.Tensor, dims, gpu: GpuShape) -> Staging:
    """:func:`staging_bytes` of reducing tensor ``x`` over ``dims`` (None or empty: every dimension)."""
    dims = list(range(x.dim())) if dims is None or (not isinstance(dims, int) and len(dims) == 0) else dims
    dims = [dims] if isinstance(dims, int) else list(dims)
    acc = 8 if x.dtype == torch.float64 or not x.dtype.is_floating_point else 4
    return staging_bytes(tuple(x.shape), tuple(x.stride()), dims, elem_size=x.element_size(), acc_size=acc,
                         offset=x.storage_offset(), gpu=gpu)
