"""Language-model rows in figures: several sequence lengths are separate groups, and a
memory-vs-sequence-length figure plots each row's peak."""

from __future__ import annotations

from plotrows import MiB, row

from fps_profile.plots import memory_vs_seq_len, plot_all
from fps_profile.analysis.series import by_group

LM = "hf:llama-tiny"
SEQS = (128, 512, 2048)


def lm_rows():
    out = []
    for seq in SEQS:
        for batch in (1, 2):
            peak = lambda base, per_token: (base + per_token * seq * batch) * MiB  # noqa: E731
            out += [row(None, LM, batch, "inference", peak(100, 0.01), seq_len=seq, device="sim:h100"),
                    row("fps", LM, batch, "select", peak(101, 0.01), seq_len=seq, device="sim:h100"),
                    row(None, LM, batch, "train_step", peak(400, 0.2), seq_len=seq, device="sim:h100",
                        status="oom" if seq == 2048 and batch == 2 else "ok"),
                    row("fps", LM, batch, "train_step", peak(150, 0.1), seq_len=seq, device="sim:h100")]
    return out


def test_memory_vs_seq_len_plots_each_rows_peak_at_one_batch():
    rows = lm_rows()
    fig = memory_vs_seq_len(rows)
    (ax,) = [a for a in fig.axes if a.get_gid() == LM]
    lines = {ln.get_gid(): ln for ln in ax.get_lines()}
    # batch 2 is measured at every length (an oom row counts), so the figure is at batch 2
    assert "batch size 2" in ax.get_xlabel()
    for gid, phase, sel in (("floor", "inference", None), ("fps", "select", "fps"), ("train:fps", "train_step", "fps"),
                            ("train:full", "train_step", None)):
        want = [(r.seq_len, r.peak_allocated_bytes / MiB) for r in rows if r.phase == phase and r.selector == sel
                and r.batch_size == 2 and r.status == "ok"]
        xs, ys = lines[gid].get_xdata(), lines[gid].get_ydata()
        assert list(zip(xs, ys)) == want, gid
    assert len(lines["train:full"].get_xdata()) == 2  # the oom cell is a mark, not a point
    assert memory_vs_seq_len([r for r in rows if r.seq_len == 512]) is None  # one length: nothing to draw


def test_several_seq_lens_are_separate_groups_and_get_the_seq_len_figure(tmp_path):
    rows = lm_rows()
    groups = by_group(rows)
    assert list(groups) == [("sim:h100", "float32", f"seq={n}") for n in sorted(SEQS, key=str)]
    assert {r.seq_len for r in groups[("sim:h100", "float32", "seq=512")]} == {512}
    assert list(by_group(rows, split_seq_len=False)) == [("sim:h100", "float32", None)]
    names = {p.name for p in plot_all(rows, tmp_path, formats=("svg",))}
    assert "memory_vs_seq_len-sim_h100-float32.svg" in names
    assert {f"memory_vs_batch-sim_h100-float32-seq_{n}.svg" for n in SEQS} <= names
