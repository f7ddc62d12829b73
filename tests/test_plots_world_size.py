"""The per-rank peak vs world size figure: one line per series through every device's rows, each
card's memory drawn, cells out of memory on every card crossed; and the committed sharded rows
of sim:h200 equal sim:h100's to the byte."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from plotrows import row

from fps_profile.cli import main
from fps_profile.plots import memory_vs_world_size, plot_all
from fps_profile.rows.store import read_results

GiB = 1024**3
H100, H200 = 85_520_809_984, 150_754_820_096  # the sim targets' memory (79.6 and 140.4 GiB)
MODEL = "hf:llama-x"
# (selector, phase) -> GiB per rank at world size 1, 2, 4, 8
PEAKS = {("fps", "select"): (60, 40, 20, 10), ("gps", "select"): (200, 130, 100, 90),
         (None, "train_step"): (600, 300, 170, 120), ("fps", "train_step"): (190, 130, 98, 81)}


def cell(selector, phase, ws, gib, device, *, model=MODEL, **kw):
    memory = {"sim:h100": H100, "sim:h200": H200}[device]
    r = row(selector, model, 1, phase, dtype="bfloat16", device=device, seq_len=2048, world_size=ws,
            env={"device_memory_bytes": memory, "device_name": device}, **kw)
    return dataclasses.replace(r, status="oom" if gib * GiB > memory else "ok", peak_allocated_bytes=gib * GiB)


def study(devices=("sim:h100", "sim:h200")):
    rows = [cell(s, p, ws, gib, d) for d in devices for (s, p), gibs in PEAKS.items()
            for ws, gib in zip((1, 2, 4, 8), gibs)]
    offload = cell("fps", "select", 1, 6, "sim:h100", offload="cpu")
    rows.append(dataclasses.replace(offload, host_peak_bytes=131 * GiB))
    # a selector measured on one process only is not a line of this figure
    rows.append(cell("wanda", "select", 1, 61, "sim:h100"))
    return rows


def panel(fig, model=MODEL):
    (ax,) = [a for a in fig.axes if a.get_gid() == model]
    return ax, {ln.get_gid(): ln for ln in ax.get_lines()}


def test_one_line_per_series_with_each_cells_peak_and_both_cards():
    ax, lines = panel(memory_vs_world_size(study()))
    names = {"fps": ("fps", "select"), "gps": ("gps", "select"), "train:full": (None, "train_step"),
             "train:fps": ("fps", "train_step")}
    for gid, key in names.items():
        assert list(lines[gid].get_xdata()) == [1, 2, 4, 8], gid
        assert list(lines[gid].get_ydata()) == list(PEAKS[key]), gid  # oom cells keep their predicted peak
    assert lines["fps +offload-cpu"].get_xdata() == [1] and lines["fps +offload-cpu"].get_ydata() == [6]
    assert "wanda" not in lines and not any("@" in g for g in lines)  # the devices agree: one line each
    assert lines["device_memory:sim:h100"].get_ydata()[0] == pytest.approx(H100 / GiB)
    assert lines["device_memory:sim:h200"].get_ydata()[0] == pytest.approx(H200 / GiB)
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert any("host 131.0 GiB" in t.get_text() for t in ax.texts)


def test_only_cells_out_of_memory_on_every_card_are_crossed():
    fig = memory_vs_world_size(study())
    _, lines = panel(fig)
    # over 140.4 GiB: oom on both cards; 81-130 GiB is oom on the H100 only, which its line shows
    assert list(zip(lines["oom:gps"].get_xdata(), lines["oom:gps"].get_ydata())) == [(1, 200)]
    assert list(lines["oom:train:full"].get_xdata()) == [1, 2, 4]
    assert list(lines["oom:train:fps"].get_xdata()) == [1]
    assert "oom:fps" not in lines
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "out of memory on every card measured" in legend
    assert {"sim:h100 memory 79.6 GiB", "sim:h200 memory 140.4 GiB"} <= set(legend)
    # on the H100 alone every cell above its memory is crossed
    _, h100 = panel(memory_vs_world_size([r for r in study() if r.device == "sim:h100"]))
    assert list(h100["oom:train:fps"].get_xdata()) == [1, 2, 4, 8]
    assert "device_memory:sim:h200" not in h100


def test_devices_that_disagree_get_a_line_each_and_one_world_size_draws_nothing():
    rows = study()
    rows = [dataclasses.replace(r, peak_allocated_bytes=r.peak_allocated_bytes + 1)
            if r.device == "sim:h200" and r.selector == "gps" else r for r in rows]
    _, lines = panel(memory_vs_world_size(rows))
    assert {"gps@sim:h100", "gps@sim:h200", "fps"} <= set(lines) and "gps" not in lines
    assert lines["gps@sim:h100"].get_linestyle() != lines["gps@sim:h200"].get_linestyle()
    assert memory_vs_world_size([r for r in study() if r.world_size == 1]) is None


def test_plot_draws_it_from_several_files_and_only_the_figures_asked(tmp_path, capsys):
    rows = study()
    a, b = tmp_path / "h100.jsonl", tmp_path / "h200.jsonl"
    for path, dev in ((a, "sim:h100"), (b, "sim:h200")):
        path.write_text("".join(r.to_json() + "\n" for r in rows if r.device == dev))
    out = tmp_path / "figs"
    assert main(["plot", str(a), str(b), "--figure", "memory_vs_world_size", "--format", "svg",
                 "--out", str(out)]) == 0
    assert [p.name for p in out.iterdir()] == ["memory_vs_world_size-sim_h100_sim_h200-bfloat16.svg"]
    assert "memory_vs_world_size-sim_h100_sim_h200-bfloat16.svg" in {p.name for p in plot_all(rows, tmp_path)}
    capsys.readouterr()
    assert main(["plot", str(a), "--figure", "nope", "--out", str(out)]) == 2
    assert "unknown figure 'nope'" in capsys.readouterr().err


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("size", ["8b", "70b"])
def test_committed_h200_rows_equal_the_h100_rows_to_the_byte(size):
    """The sim's H100 and H200 share kernels and allocator: only the status may differ."""
    h100 = {r.key(): r for r in read_results(ROOT / f"results/fsdp-sim-h100-{size}.jsonl")}
    h200 = read_results(ROOT / f"results/fsdp-sim-h200-{size}.jsonl")
    assert len(h200) == 20  # world sizes 1, 2, 4, 8 x five cells
    for r in h200:
        twin = h100[dataclasses.replace(r, device="sim:h100").key()]
        assert r.peak_allocated_bytes == twin.peak_allocated_bytes, r.key()
        assert r.status == ("oom" if r.peak_allocated_bytes > H200 else "ok"), r.key()
        assert twin.status == ("oom" if twin.peak_allocated_bytes > H100 else "ok"), twin.key()
