"""FPS and Wanda read a language model's batch in chunks of whole sequences (``SELECT_TOKENS``).

The statistics are sums over tokens, so the chunks must give the whole batch's scores (up to
float rounding: the whole batch is the reference, run with ``micro_batch`` equal to the batch)
and its mask, with one chunk's activations alive instead of the batch's.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from fps_profile import select  # noqa: E402
from fps_profile import knobs  # noqa: E402
from fps_profile.knobs import token_chunk  # noqa: E402
from numerics import mask_mismatches, sum_rtol  # noqa: E402
from test_llm_selectors import MODELS, VOCAB, out_axis  # noqa: E402

SEQ, BATCH = 8, 6


def test_token_chunk_takes_whole_sequences_up_to_the_token_budget():
    limit = knobs.SELECT_TOKENS
    assert token_chunk(torch.zeros(4, 8192, dtype=torch.long)) == limit // 8192
    assert token_chunk(torch.zeros(2, 4 * limit, dtype=torch.long)) == 1  # one sequence over the budget
    assert token_chunk(torch.zeros(2, limit // 2, dtype=torch.long)) is None  # exactly the budget: whole
    assert token_chunk(torch.zeros(64, 3, 224, 224)) is None  # images run whole
    assert token_chunk(torch.zeros(4 * limit, 2)) is None  # floats are features, not token ids


def _batches():
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen)
    return [(ids, ids)]


@pytest.mark.parametrize("model_name", ["llama", "gpt2"])
@pytest.mark.parametrize("selector", ["fps", "wanda"])
def test_chunked_selection_gives_the_whole_batch_scores_and_mask(monkeypatch, model_name, selector):
    model = MODELS[model_name]().eval()
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]) if args else None)
    whole_scores, chunk_scores = {}, {}
    whole = select(model, _batches(), selector, k=2, micro_batch=BATCH, keep_scores=whole_scores)
    assert set(seen) == {BATCH}
    monkeypatch.setattr(knobs, "SELECT_TOKENS", 2 * SEQ)  # chunks of 2 of the 6 sequences
    seen.clear()
    chunked = select(model, _batches(), selector, k=2, keep_scores=chunk_scores)
    assert set(seen) == {2}  # the early-stop trace included: never the whole batch
    assert chunk_scores.keys() == whole_scores.keys()
    rtol = sum_rtol(BATCH * SEQ, torch.float32, extra_ops=2)
    for name, ref in whole_scores.items():
        torch.testing.assert_close(chunk_scores[name], ref, rtol=rtol, atol=0, msg=name)
    # rows = output neurons (GPT-2's Conv1D weight is [in, out]: transposed)
    rows = {n: (sc.T if out_axis(model, n) == 1 else sc) for n, sc in whole_scores.items()}
    got = {n: (chunked[n].T if out_axis(model, n) == 1 else chunked[n]) for n in whole_scores}
    assert not mask_mismatches(got, rows, k=2, tol=2 * rtol)
    assert chunked.nbytes == whole.nbytes


def test_sim_peak_is_one_chunk_of_a_long_batch():
    """On a simulated H100 the auto chunk is exactly an explicit micro-batch of the same size, and
    4 sequences of 8,192 tokens in two chunks save at least the three ``[2, 8192, 8192]`` bfloat16
    MLP tensors (Llama-3.2-1B's intermediate size is 8,192) of the chunk that is not alive."""
    from fps_profile.measure.runner import measure
    from fps_profile.rows.cell import Cell

    def peak(**axes) -> int:
        row = measure(Cell(model="hf:llama-3.2-1b", batch_size=4, seq_len=8192, dtype="bfloat16",
                           device="sim:h100", **axes))
        assert row.status == "ok", row.error
        return row.peak_allocated_bytes

    chunk = token_chunk(torch.zeros(4, 8192, dtype=torch.long))
    assert chunk == 2
    auto = peak(phase="select", selector="fps")
    assert auto == peak(phase="select", selector="fps", micro_batch=chunk)
    whole = peak(phase="select", selector="fps", micro_batch=4)  # micro_batch >= batch: one forward
    assert whole - auto >= 3 * (4 - chunk) * 8192 * 8192 * 2


def test_max_batch_of_a_chunked_selection_is_one_probe_at_two_chunks():
    from test_maxbatch_search import BUDGET, fake_measure

    from fps_profile.run.maxbatch import chunked_search

    calls: list[int] = []
    res = chunked_search(fake_measure(100, calls=calls), BUDGET, chunk=8)
    assert calls == [16] and res.chunk == 8 and res.max_batch == 16 and res.peak_bytes == BUDGET - 10 * 84
    for over_as_ok in (False, True):  # two chunks do not fit: the ordinary search takes over
        assert chunked_search(fake_measure(15, over_as_ok=over_as_ok), BUDGET, chunk=8) is None


def test_cli_max_batch_reports_any_batch_for_fps_on_a_language_model(tmp_path):
    import json
    import subprocess
    import sys

    out = tmp_path / "mb.jsonl"
    done = subprocess.run([sys.executable, "-m", "fps_profile", "sweep", "--device", "sim:h100", "--model",
                           "hf:llama-tiny", "--dtype", "bfloat16", "--seq-len", "2048", "--batch-size", "1",
                           "--selector", "fps", "--phase", "select", "--max-batch", "--out", str(out),
                           "--no-progress"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    line = next(ln for ln in done.stdout.splitlines() if "| fps" in ln)
    assert "| any " in line and f"reads {knobs.SELECT_TOKENS // 2048} sequences at a time" in line
    rows = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert [(r["batch_size"], r["status"]) for r in rows] == [(2 * knobs.SELECT_TOKENS // 2048, "ok")]
