"""The staging buffer of CUDA reductions (fps_profile.sim.reductions), against configurations worked by hand."""

from __future__ import annotations

import pytest
import torch

from fps_profile.selection.selectors.conv_stats import chunked_norm
from fps_profile.sim.reductions import GpuShape, staging_bytes, tensor_staging
from numerics import sum_rtol

H100 = GpuShape(sm_count=132, max_threads_per_sm=2048)


def _tokens(b, t, c, **kw):
    return staging_bytes((b, t, c), (t * c, c, 1), (0, 1), elem_size=4, gpu=H100, **kw)


def test_fps_reduction_of_a_vit_b_linear_input():
    """[64, 197, 768] over the tokens: outputs 768, 12608 inputs each, not the fastest dimension.

    output_vec_size 4 -> dim0 = 192; block 32 x 4 (128 threads); 32 outputs per lane row, 4 warps split
    the inputs (3152 per thread); grid.x = ceil(192 / 32) = 6 <= 132 * 16 blocks; ctas_per_output =
    max(min(ceil(2112 / 6), ceil(3152 / 16)), ceil(3152 / 256)) = 197; the buffer is
    4 * 768 * 197 * 32 * 4 bytes and 6 semaphores.
    """
    s = _tokens(64, 197, 768)
    assert (s.ctas_per_output, s.buffer_bytes, s.semaphore_bytes) == (197, 4 * 768 * 197 * 32 * 4, 4 * 6)
    assert s.buffer_bytes == 2 * 64 * 197 * 768 * 4  # twice the float32 activation


def test_wide_inputs_are_capped_by_the_grid():
    """[64, 197, 3072]: grid.x = 24, so ctas_per_output = ceil(2112 / 24) = 88 < 197."""
    s = _tokens(64, 197, 3072)
    assert (s.ctas_per_output, s.buffer_bytes) == (88, 4 * 3072 * 88 * 128)


def test_no_staging_where_each_thread_has_few_values():
    assert _tokens(1, 197, 768).buffer_bytes == 0  # 197 / 4 = 50 values per thread
    assert staging_bytes((64 * 197, 768), (768, 1), (1,), elem_size=4, gpu=H100).buffer_bytes == 0  # per row
    # blocks of 512 tokens, as chunked_norm reduces: 128 values per thread
    assert staging_bytes((24, 512, 768), (512 * 768, 768, 1), (1,), elem_size=4, gpu=H100).buffer_bytes == 0


def test_tensor_staging_reads_shape_strides_dtype():
    x = torch.empty(16, 197, 384, dtype=torch.bfloat16)
    s = tensor_staging(x, (0, 1), H100)
    assert s == staging_bytes((16, 197, 384), (197 * 384, 384, 1), (0, 1), elem_size=2, acc_size=4, gpu=H100)
    assert s.buffer_bytes > 0
    # the same data seen as [tokens, C] is the same reduction (TensorIterator coalesces the token dims)
    assert tensor_staging(x.view(-1, 384), 0, H100) == s
    # a full reduction stages one value per block
    full = tensor_staging(torch.empty(64 * 197 * 768), None, H100)
    assert full.buffer_bytes == 4 * full.ctas_per_output


def test_fewer_sms_fewer_blocks():
    a100 = GpuShape(108)
    assert staging_bytes((64, 197, 3072), (197 * 3072, 3072, 1), (0, 1), elem_size=4, gpu=a100).ctas_per_output \
        == -(-108 * 16 // 24)


@pytest.mark.parametrize("shape", [(3, 197, 40), (2, 512, 8), (5, 7, 3), (1, 1030, 16)])
@pytest.mark.parametrize("ord", [1, 2])
def test_chunked_norm_matches_a_float64_reference(shape, ord):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    want = x.double().abs().pow(ord).sum((0, 1))
    got = chunked_norm(x, ord, rows=64)
    assert got.dtype == torch.float32 and got.shape == (shape[-1],)
    # a float32 sum of shape[0] x shape[1] same-sign terms, each squared first for ord 2
    rtol = sum_rtol(shape[0] * shape[1], torch.float32, extra_ops=ord - 1)
    torch.testing.assert_close(got.double(), want, rtol=rtol, atol=0)


def test_sim_counts_reduction_scratch():
    """A sim run reducing a [64, 197, 768] activation holds the staging buffer on top of its input and output.

    The 77,463,552-byte buffer gets a segment of its own rounded up to 2 MiB, and the 128 KiB left
    is too little to split off (1 MiB at least), so the whole segment counts; the semaphores take
    one 512-byte block.
    """
    from fps_profile.sim import Simulator

    def run(scratch: bool) -> int:
        with Simulator("sim:h100", reduction_scratch=scratch) as sim:
            x = torch.empty(64, 197, 768)
            return sim.measure(lambda: torch.linalg.vector_norm(x, 1, dim=(0, 1))).peak_bytes

    segment = -(-(4 * 768 * 197 * 128) // (2 << 20)) * (2 << 20)
    assert segment - 4 * 768 * 197 * 128 == 128 << 10
    assert run(True) - run(False) == segment + 512
    # what the GPU check's probe predicts for its measurement on an H100
    from fps_profile.gpucheck.probes import OPS, predicted_scratch
    from fps_profile.measure.targets import TARGETS

    assert predicted_scratch((64, 197, 768), torch.float32, OPS["norm1"], TARGETS["h100"]) == segment + 512
    assert predicted_scratch((64, 197, 768), torch.float32, OPS["sum"], TARGETS["h100"]) == segment + 512
    assert predicted_scratch((1, 197, 768), torch.float32, OPS["norm1"], TARGETS["h100"]) == 0
