"""Per-input-feature sums of |x| or x**2 for one linear or convolution call.

For a linear call the feature is the input's last dimension. For a convolution
it is ``(input channel, kernel offset)``: the sum for channel ``c`` at offset
``(a, b)`` runs over every output position of every sample of the input value
that kernel entry multiplies there, zero padding included in the count (it
adds nothing to the sum). For each offset those values are a strided *view* of
the unpadded input, so every sum is one ``torch.linalg.vector_norm`` over a
view: no unfolded copy and no activation-sized ``abs()`` or ``pow()``
temporary. Convolutions that tile their input (stride equal to the kernel, no
padding or dilation: patch embeddings, ConvNeXt downsampling) need one
reduction for all offsets.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def reduce(x: torch.Tensor, dims: tuple[int, ...], ord: int) -> torch.Tensor:
    """Sum of ``|x|`` (``ord=1``) or ``x**2`` (``ord=2``) over ``dims``, in float32."""
    r = torch.linalg.vector_norm(x, ord=ord, dim=dims).float()
    return r.square_() if ord == 2 else r


CHUNK_ROWS = 512  # tokens per first-step reduction of a linear input (<= 1020, see chunked_norm)


def chunked_norm(x: torch.Tensor, ord: int, rows: int = CHUNK_ROWS) -> torch.Tensor:
    """Sum over all leading dimensions of ``|x|`` (``ord=1``) or ``x**2`` (``ord=2``), per last-dimension feature.

    Reduces blocks of ``rows`` tokens first (``[k, rows, C] -> [k, C]``) and the ``k``
    partial results after. In one step, a reduction of ``[tokens, C]`` over the tokens gets
    so many values per output that ATen's CUDA reduction splits it over thread blocks and
    allocates a global-memory staging buffer (up to twice the float32 activation; see
    docs/sim.md, "Reductions on CUDA"); no step here is large enough for that
    (``rows <= 1020`` keeps each under ``max_values_per_thread``). The extra memory is the
    ``[k, C]`` partials, 1/``rows`` of the input. Float32 result.
    """
    flat = x.reshape(-1, x.shape[-1])
    n = flat.shape[0] // rows * rows
    parts = []
    if n:
        parts.append(torch.linalg.vector_norm(flat[:n].view(-1, rows, flat.shape[1]), ord, dim=1))
    if n < flat.shape[0]:
        parts.append(torch.linalg.vector_norm(flat[n:], ord, dim=0, keepdim=True))
    partial = torch.cat(parts).float() if len(parts) > 1 else parts[0].float()
    return (partial if ord == 1 else partial.square_()).sum(0)


def linear_sums(x: torch.Tensor, ord: int) -> tuple[torch.Tensor, int]:
    """Sums over every leading position of ``x`` (``[..., in]``), and how many positions.

    A contiguous input is reduced in chunks (:func:`chunked_norm`: no staging buffer on
    CUDA); any other in one step over a view, never copying the activation.
    """
    if x.dim() == 1:
        x = x.unsqueeze(0)
    count = x.numel() // x.shape[-1]
    if x.is_contiguous():
        return chunked_norm(x, ord), count
    return reduce(x, tuple(range(x.dim() - 1)), ord), count


def _per_dim(value: int | Sequence[int], n: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    value = tuple(int(v) for v in value)
    return value * n if len(value) == 1 else value


def leading_padding(padding, kernel: Sequence[int], dilation: Sequence[int]) -> tuple[int, ...]:
    """Zeros before the input, per spatial dim, for ``padding`` as convolutions take it.

    ``"same"`` pads ``dilation * (kernel - 1)`` in all, the odd one at the end (as PyTorch does).
    """
    if padding == "valid":
        return (0,) * len(kernel)
    if padding == "same":
        return tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))
    return _per_dim(padding, len(kernel))


def conv_sums(x: torch.Tensor, out_size: Sequence[int], kernel: Sequence[int], stride, padding,
              dilation, ord: int) -> tuple[torch.Tensor, int]:
    """Sums for one convolution call, shaped ``[in_channels, *kernel]``, and the token count.

    Args:
        x: The convolution's input, ``[B, C, *spatial]`` or unbatched ``[C, *spatial]``.
        out_size: Spatial size of the convolution's output.
        kernel: Spatial kernel size.
        stride, padding, dilation: As the convolution took them (ints, tuples,
            ``"same"`` or ``"valid"``).
        ord: 1 for sums of ``|x|``, 2 for sums of ``x**2``.

    Returns:
        The sums and ``B * prod(out_size)``, the number of output positions.
    """
    n = len(kernel)
    if x.dim() == n + 1:
        x = x.unsqueeze(0)
    stride, dilation = _per_dim(stride, n), _per_dim(dilation, n)
    lead = leading_padding(padding, kernel, dilation)
    count = x.shape[0] * math.prod(out_size)
    spatial = tuple(range(2, n + 2))
    if tuple(stride) == tuple(kernel) and not any(lead) and all(d == 1 for d in dilation):
        # Non-overlapping patches: split each spatial dim into (position, offset), views only.
        patches = x[(slice(None), slice(None), *(slice(0, o * k) for o, k in zip(out_size, kernel)))]
        for d, (o, k) in enumerate(zip(out_size, kernel)):
            patches = patches.unflatten(2 + 2 * d, (o, k))
        # Two steps, the last position dim first: in one, a channels-last input (1x1 convs
        # of ConvNeXt, downsampling) has CUDA split each output over thread blocks with a
        # staging buffer as large as the activation; the partial here is 1/out_size[-1] of it.
        last = 2 + 2 * (n - 1)
        partial = reduce(patches, (last,), ord)
        return partial.sum((0, *(2 + 2 * d for d in range(n - 1)))), count
    windows = [[_window(size, o, st, p, dil, a) for a in range(k)]
               for size, o, st, k, p, dil in zip(x.shape[2:], out_size, stride, kernel, lead, dilation)]
    sums = torch.zeros((x.shape[1], *kernel), dtype=torch.float32, device=x.device)
    for head in itertools.product(*(range(k) for k in kernel[:-1])):
        rows = [windows[d][a] for d, a in enumerate(head)]
        if None in rows:
            continue
        view = x[(slice(None), slice(None), *rows)]
        if n == 1:
            for a, cols in enumerate(windows[-1]):
                if cols is not None:
                    sums[:, a] = reduce(view[..., cols], (0, 2), ord)
            continue
        # Every offset along the last dim reads the same rows: reduce them once to a
        # small [C, W], zero-pad it as the convolution pads, and read every offset's
        # strided columns at once.
        # Rows first, then the batch: in one step a strided view splits over CUDA thread
        # blocks with a staging buffer as large as the input; the [B, C, W] partial is 1/rows of it.
        per_column = reduce(view, spatial[:-1], ord).sum(0)
        span = (out_size[-1] - 1) * stride[-1] + (kernel[-1] - 1) * dilation[-1] + 1
        padded = F.pad(per_column, (lead[-1], max(0, span - lead[-1] - per_column.shape[-1])))
        taps = padded.as_strided((padded.shape[0], kernel[-1], out_size[-1]),
                                 (padded.stride(0), dilation[-1], stride[-1]))
        sums[(slice(None), *head)] = taps.sum(-1)
    return sums, count


def _window(size: int, out: int, stride: int, lead: int, dilation: int, a: int) -> slice | None:
    """The input positions kernel offset ``a`` reads along one dim, as a strided slice (None: none)."""
    shift = a * dilation - lead  # output position q reads input index q * stride + shift
    first = max(0, -(shift // stride))  # ceil(-shift / stride): the first q inside the input
    last = min(out - 1, (size - 1 - shift) // stride)
    return slice(first * stride + shift, last * stride + shift + 1, stride) if first <= last else None
