"""Where the CUDA backend decides differently from the CPU backend the sim runs on.

The sim executes on fake *CPU* tensors (a fake CUDA tensor cannot run a
backward pass without a GPU: pytorch/pytorch#92627), so every choice PyTorch
makes from the device type would be the CPU's. :func:`cuda_behaviour` puts
back the CUDA choices that change memory:

* attention: :func:`fps_profile.sim.attention.sdpa` (the CUDA kernel choice);
* optimizers: ``torch.optim`` defaults to the ``foreach`` implementation for
  CUDA parameters (a fake tensor is neither CUDA nor a plain ``Tensor``, so it
  would get the per-parameter loop). Foreach Adam/AdamW allocates
  ``sqrt(exp_avg_sq)`` for *all* parameters at once: one more copy of the
  trainable parameters at the optimizer step;
* activation checkpointing: a non-reentrant checkpoint recomputes its block inside
  the autograd engine, where torch-function modes (the attention stand-in here) are
  not active, so the recomputation would take the CPU's attention kernel and save
  other tensors than the forward did; :func:`recompute_with` re-enters a mode there;
* autocast: CPU autocast stands in for CUDA autocast (same dtype sizes; the
  sim's selectors pick bfloat16 on CPU, float16 on CUDA). Where the two
  policies differ the CUDA one is applied: ops CUDA autocast runs in float32
  (softmax, log_softmax, layer_norm, group_norm, sum, cumsum, prod, norms,
  exp, log, pow, ...: CPU keeps them in the low precision) get float32 inputs,
  and ``mv``/``addmv``/``addr``, low precision on CUDA only, get low-precision ones.
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil

import torch
from torch.overrides import TorchFunctionMode

from fps_profile.sim.attention import sdpa

_SDPA = torch.nn.functional.scaled_dot_product_attention
_FP32_ON_CUDA = frozenset("""
    acos asin cosh erfinv exp expm1 log log10 log2 log1p reciprocal rsqrt sinh tan pow softplus
    layer_norm native_layer_norm group_norm frobenius_norm nuclear_norm cosine_similarity
    poisson_nll_loss cosine_embedding_loss nll_loss hinge_embedding_loss kl_div l1_loss smooth_l1_loss
    huber_loss mse_loss margin_ranking_loss multilabel_margin_loss soft_margin_loss triplet_margin_loss
    multi_margin_loss binary_cross_entropy_with_logits dist pdist cdist renorm logsumexp
    prod softmax log_softmax cumprod cumsum sum norm linalg_vector_norm linalg_matrix_norm
""".split())
_LOW_ON_CUDA_ONLY = frozenset({"mv", "addmv", "addr"})


def _cast(args, kwargs, dtype, when):
    def cast(x):
        return x.to(dtype) if isinstance(x, torch.Tensor) and when(x) else x

    return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}


class CudaFunctions(TorchFunctionMode):
    """Function-level stand-ins for CUDA choices (attention kernel, autocast policy)."""

    def __init__(self, capability: tuple[int, int]) -> None:
        super().__init__()
        self.capability = capability

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is _SDPA:
            return sdpa(*args, **kwargs, capability=self.capability)
        if torch.is_autocast_enabled("cpu"):
            name = getattr(func, "__name__", "")
            low = torch.get_autocast_dtype("cpu")
            if name in _FP32_ON_CUDA:
                args, kwargs = _cast(args, kwargs, torch.float32, lambda t: t.dtype in (torch.float16, torch.bfloat16))
            elif name in _LOW_ON_CUDA_ONLY:
                args, kwargs = _cast(args, kwargs, low, lambda t: t.dtype == torch.float32)
        return func(*args, **kwargs)


def _cuda_default_to_fused_or_foreach(params, differentiable, use_fused=False):
    if torch.jit.is_scripting() or differentiable:
        return False, False
    return False, True


@contextlib.contextmanager
def cuda_optimizers():
    """Make ``torch.optim`` choose its implementation as for CUDA parameters."""
    import torch.optim

    patched = []
    for info in pkgutil.iter_modules(torch.optim.__path__):
        mod = importlib.import_module(f"torch.optim.{info.name}")
        if hasattr(mod, "_default_to_fused_or_foreach"):
            patched.append((mod, mod._default_to_fused_or_foreach))
            mod._default_to_fused_or_foreach = _cuda_default_to_fused_or_foreach
    try:
        yield
    finally:
        for mod, fn in patched:
            mod._default_to_fused_or_foreach = fn


@contextlib.contextmanager
def _both(first, second):
    with first, second:
        yield


@contextlib.contextmanager
def recompute_with(make_mode) -> None:
    """Inside the block, every non-reentrant activation checkpoint recomputes under a
    fresh ``make_mode()`` (whatever ``context_fn`` it was given still applies)."""
    import torch.utils.checkpoint as cp

    original = cp._checkpoint_without_reentrant_generator_impl

    def patched(fn, args, kwargs, *, context_fn=cp.noop_context_fn, **rest):
        def with_mode():
            forward, recompute = context_fn()
            return forward, _both(recompute, make_mode())

        return original(fn, args, kwargs, context_fn=with_mode, **rest)

    cp._checkpoint_without_reentrant_generator_impl = patched
    try:
        yield
    finally:
        cp._checkpoint_without_reentrant_generator_impl = original


@contextlib.contextmanager
def cuda_behaviour(capability: tuple[int, int]):
    """All CUDA stand-ins at once (see the module docstring)."""
    with cuda_optimizers(), recompute_with(lambda: CudaFunctions(capability)), CudaFunctions(capability):
        yield
