"""Scaled dot-product attention as the CUDA backend would run it.

``F.scaled_dot_product_attention`` picks a kernel at run time. On a CUDA GPU
(``aten/src/ATen/native/transformers/cuda/sdp_utils.cpp``, default priority
flash, memory-efficient, math) the choice decides the memory: the fused
kernels save only the output and a float32 log-sum-exp per query, the math
path materialises the ``B x H x T x T`` attention matrix (and its softmax) and
saves them for the backward. The sim runs on fake *CPU* tensors, where the
same call would take the CPU's kernel, so :func:`sdpa` applies the CUDA rules
and calls the chosen kernel's ATen operator directly; its fake implementation
gives outputs of the CUDA kernel's shapes, and its autograd formula saves
what the CUDA kernel saves:

* flash (sm80-sm90; float16/bfloat16; no attention mask; head dim <= 256):
  output plus log-sum-exp ``[B, H, T]`` float32;
* memory-efficient (float32/16/bf16; head dim divisible by 4 in float32, 8
  otherwise; masks allowed): output plus log-sum-exp ``[B, H, ceil32(T)]``
  float32, the latter only when a gradient is needed;
* math otherwise (e.g. float64, an odd head dim, a nested layout).

Grouped-query attention (fewer key/value heads than query heads, as Llama-3,
Mistral and Qwen2 have) reaches SDPA in one of two ways. ``transformers``
passes the key/value heads as they are with ``enable_gqa=True`` where it can
(no attention mask: the sim's batches, as real unpadded ones), and only the
flash kernel takes that (``check_batch_size_and_num_heads_dense<true>``: query
heads a multiple of the key heads, key and value heads equal); the
memory-efficient kernel needs equal heads, so a GQA call that misses flash
runs math, which expands the key/value heads itself. Without ``enable_gqa``,
``transformers`` expands them first (``repeat_kv``), and the call is an
ordinary one.

Not modelled: kernel-internal workspaces (flash backward's float32 ``dq``
accumulator, the efficient kernel's split-key buffer), which live only while
one attention layer's backward runs; the cuDNN backend (last in PyTorch's
default order).
"""

from __future__ import annotations

import math

import torch

aten = torch.ops.aten
_HALF = (torch.float16, torch.bfloat16)


def choose_kernel(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None,
                  capability: tuple[int, int], enable_gqa: bool = False) -> str:
    """``"flash"``, ``"efficient"`` or ``"math"``: what SDPA runs on a GPU of ``capability``."""
    dense = all(t.dim() == 4 and t.layout is torch.strided and not t.is_nested for t in (query, key, value))
    last_dim_ok = all(t.stride(-1) == 1 for t in (query, key, value))
    same_heads = query.size(1) == key.size(1) == value.size(1) if dense else False
    gqa_heads = (dense and enable_gqa and key.size(1) == value.size(1) and key.size(1) > 0
                 and query.size(1) % key.size(1) == 0)
    nonempty = dense and query.size(2) > 0 and key.size(2) > 0
    if not (dense and last_dim_ok and nonempty):
        return "math"
    d_qk, d_v = query.size(-1), value.size(-1)
    if (query.dtype in _HALF and attn_mask is None and d_qk == key.size(-1) == d_v and d_qk <= 256
            and (8, 0) <= capability <= (9, 0) and (same_heads or gqa_heads)):
        return "flash"
    align = 8 if query.dtype in _HALF else 4
    if (query.dtype in _HALF + (torch.float32,) and d_qk == key.size(-1) and d_qk % align == 0
            and d_v % align == 0 and (5, 0) <= capability <= (9, 0) and same_heads):
        return "efficient"
    return "math"


def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False, *,
         capability: tuple[int, int] = (9, 0)) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` with the kernel a CUDA GPU would choose.

    Under autocast the inputs are cast first, as CUDA autocast casts SDPA's
    inputs (it is on its lower-precision list).
    """
    device = query.device.type
    if torch.is_autocast_enabled(device):
        low = torch.get_autocast_dtype(device)
        query, key, value = (t.to(low) if t.is_floating_point() else t for t in (query, key, value))
        if attn_mask is not None and attn_mask.is_floating_point():
            attn_mask = attn_mask.to(low)
    kernel = choose_kernel(query, key, value, attn_mask, capability, enable_gqa)
    if kernel == "flash":
        return aten._scaled_dot_product_flash_attention(query, key, value, dropout_p, is_causal, scale=scale)[0]
    if kernel == "efficient":
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
        bias = attn_mask
        if bias is not None and bias.dtype == torch.bool:  # the kernel takes an additive bias
            bias = torch.zeros_like(bias, dtype=query.dtype).masked_fill_(~bias, -math.inf)
        if bias is not None:
            bias = bias.expand(query.size(0), query.size(1), query.size(2), key.size(2))
        return aten._scaled_dot_product_efficient_attention(query, key, value, bias, grad, dropout_p, is_causal,
                                                            scale=scale)[0]
    return aten._scaled_dot_product_attention_math(query, key, value, attn_mask, dropout_p, is_causal,
                                                   scale=scale, enable_gqa=enable_gqa)[0]
