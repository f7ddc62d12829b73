"""Where ``transformers`` decides differently on fake tensors than on the real batch.

``transformers`` treats a fake tensor as a traced one (``is_tracing``) and then
skips checks that need values. One of them changes memory: the causal-mask
builder asks whether the position ids describe several sequences packed into
one row (``find_packed_sequence_indices``); on real ids it finds none and
leaves the mask out, so SDPA runs with ``is_causal=True`` (and may take a fused
kernel); while tracing it must assume packing, materialises a
``[batch, 1, T, T]`` boolean mask and hands it to SDPA, which then rules the
flash kernel out. The sim's batches are what the real runs feed: one
unpacked sequence per row, position ids made by the model itself. So inside
the simulator the check answers as it does on those real ids.
"""

from __future__ import annotations

import contextlib


def _not_packed(position_ids):
    return None


@contextlib.contextmanager
def unpacked_sequences():
    """Inside the block, ``transformers`` sees every row of a batch as one sequence (no packing)."""
    try:
        from transformers import masking_utils
    except ImportError:  # nothing to patch
        yield
        return
    original = getattr(masking_utils, "find_packed_sequence_indices", None)
    if original is None:  # a transformers version without packing detection
        yield
        return
    masking_utils.find_packed_sequence_indices = _not_packed
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = original
