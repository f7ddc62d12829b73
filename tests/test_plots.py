"""Figures are drawn from the rows: plotted points equal the rows' values; holes don't break them."""

from __future__ import annotations

import json

import pytest
from plotrows import BATCHES, MiB, PARAMS, find, grid, row

from fps_profile.cli import main
from fps_profile.plots import draw, floor_fraction, memory_vs_batch, memory_vs_params, plot_all, ratio_vs_batch
from fps_profile.plots import style as st
from fps_profile.analysis.series import sort_names
from fps_profile.plots import time_vs_batch
from fps_profile.analysis.series import by_group, device_memory_bytes, series


def panel(fig, model):
    return next(ax for ax in fig.axes if ax.get_gid() == model)


def line(ax, gid):
    found = [ln for ln in ax.get_lines() if ln.get_gid() == gid]
    assert len(found) == 1, f"{gid}: {len(found)} lines"
    return found[0]


def xy(ln):
    return list(ln.get_xdata()), list(ln.get_ydata())


@pytest.fixture(scope="module")
def rows():
    return grid()


def test_memory_vs_batch_plots_each_rows_peak(rows):
    fig = memory_vs_batch(rows)
    for model in PARAMS:
        ax = panel(fig, model)
        for name, sel, phase in (("gps", "gps", "select"), ("fps", "fps", "select"),
                                 ("floor", None, "inference"), ("train:full", None, "train_step")):
            cells = [find(rows, model=model, selector=sel, batch=b, phase=phase) for b in BATCHES]
            ok = [r for r in cells if r.status == "ok"]
            want = [r.peak_allocated_bytes / MiB for r in ok]
            assert xy(line(ax, name)) == ([r.batch_size for r in ok], pytest.approx(want))
        assert ax.get_ylabel() == "peak memory (MiB)"
        assert ax.get_xscale() == "log"


def test_memory_vs_batch_marks_oom_and_skips_missing_and_failed(rows):
    fig = memory_vs_batch(rows)
    big, small = panel(fig, "big_vit"), panel(fig, "small_vit")
    assert list(line(big, "oom:gps").get_xdata()) == [8]
    assert list(line(big, "oom:train:full").get_xdata()) == [8]
    assert not [ln for ln in small.get_lines() if ln.get_gid().startswith("oom:")]
    assert list(line(small, "random").get_xdata()) == [1, 2, 8]  # batch 4 missing
    assert list(line(small, "magnitude").get_xdata()) == [1, 4, 8]  # batch 2 failed
    # OOM crosses sit above every plotted point.
    top = max(max(ln.get_ydata()) for ln in big.get_lines() if not ln.get_gid().startswith("oom:"))
    assert big.get_ylim()[1] * 0.8 >= top * 0.999


def test_device_memory_line_when_known_and_near_the_data():
    env = {"device_memory_bytes": 2 * 1024**3, "device_name": "GPU"}
    rows = [row("gps", "small_vit", b, "select", b * 512 * MiB, device="cuda", env=env) for b in (1, 2)]
    fig = memory_vs_batch(rows)
    ax = panel(fig, "small_vit")
    assert ax.get_ylabel() == "peak memory (GiB)"
    assert list(line(ax, "device_memory").get_ydata()) == [2.0, 2.0]
    assert xy(line(ax, "gps")) == ([1, 2], [0.5, 1.0])
    two = rows + [row("gps", "big_vit", b, "select", b * 768 * MiB, device="cuda", env=env) for b in (1, 2)]
    ax = memory_vs_params(two).axes[0]
    assert list(line(ax, "device_memory").get_ydata()) == [2.0, 2.0]
    assert xy(line(ax, "gps")) == ([PARAMS["small_vit"], PARAMS["big_vit"]], [1.0, 1.5])
    far = [row("gps", "small_vit", 1, "select", MiB, device="cuda", env=env)]
    ax = panel(memory_vs_batch(far), "small_vit")
    assert not [ln for ln in ax.get_lines() if ln.get_gid() == "device_memory"]
    assert any("off scale" in t.get_text() for t in ax.texts)


def test_sim_rows_get_the_target_memory():
    targets = pytest.importorskip("fps_profile.measure.targets")
    rows = [row("gps", "small_vit", b, "select", b * 16 * 1024**3, device="sim:h100", env={}) for b in (1, 2)]
    assert device_memory_bytes(rows) == targets.get_target("sim:h100").memory_bytes
    assert device_memory_bytes([row("gps", "small_vit", 1, "select", MiB, device="sim:nope")]) is None
    ax = panel(memory_vs_batch(rows), "small_vit")
    assert line(ax, "device_memory").get_ydata()[0] == pytest.approx(targets.get_target("sim:h100").memory_bytes
                                                                      / 1024**3)


def test_ratio_vs_batch_divides_by_the_reference(rows):
    fig = ratio_vs_batch(rows)
    ax = panel(fig, "big_vit")
    xs, ys = xy(line(ax, "gps"))
    assert xs == [1, 2, 4]  # batch 8 is OOM
    assert ys == pytest.approx([find(rows, model="big_vit", selector="gps", batch=b).peak_allocated_bytes
                                / find(rows, model="big_vit", selector="fps", batch=b).peak_allocated_bytes
                                for b in xs])
    assert ys == sorted(ys)  # the synthetic GPS grows faster than FPS
    assert list(line(ax, "oom:gps").get_xdata()) == [8]
    assert ratio_vs_batch(rows, reference="nope") is None


def test_memory_vs_params_at_the_largest_common_batch(rows):
    fig = memory_vs_params(rows)
    ax = fig.axes[0]
    assert ax.get_title() == "batch size 8"
    xs, ys = xy(line(ax, "fps"))
    assert xs == [PARAMS["small_vit"], PARAMS["big_vit"]]
    assert ys == pytest.approx([find(rows, model=m, selector="fps", batch=8).peak_allocated_bytes / MiB
                                for m in ("small_vit", "big_vit")])
    assert list(line(ax, "oom:gps").get_xdata()) == [PARAMS["big_vit"]]
    assert list(line(memory_vs_params(rows, batch=2).axes[0], "gps").get_xdata()) == xs
    assert memory_vs_params([r for r in rows if r.model == "small_vit"]) is None  # one model: no figure


def test_time_vs_batch_times_and_ratios(rows):
    fig = time_vs_batch(rows)
    top, bottom = panel(fig, "small_vit"), panel(fig, "small_vit/ratio")
    xs, ys = xy(line(top, "gps"))
    assert ys == [find(rows, model="small_vit", selector="gps", batch=b).wall_time_s for b in xs]
    xs, ys = xy(line(bottom, "gps"))
    assert ys == pytest.approx([0.02 / 0.05] * len(xs))
    no_ref = time_vs_batch(rows, reference="nope")
    assert [ax.get_gid() for ax in no_ref.axes] == ["small_vit", "big_vit"]  # no empty ratio panels
    sim = [row("gps", "small_vit", 1, "select", MiB, device="sim", time_floor_s=1e-3)]
    assert time_vs_batch(sim) is None


def test_floor_fraction_achieved_or_predicted():
    measured = [row(s, "small_vit", b, "select", MiB, wall=0.1 * b, flops=10**9, time_floor_s=0.01 * b)
                for s in ("fps", "gps") for b in (1, 2)]
    ax = panel(floor_fraction(measured), "small_vit")
    assert xy(line(ax, "gps")) == ([1, 2], pytest.approx([10.0, 10.0]))
    sim = [row(s, "small_vit", b, "select", MiB, device="sim:h100", time_floor_s=0.01 * b) for s in ("fps",)
           for b in (1, 2)]
    ax = panel(floor_fraction(sim), "small_vit")
    assert xy(line(ax, "fps")) == ([1, 2], pytest.approx([0.01, 0.02]))
    assert floor_fraction(grid()) is None


def test_colours_and_markers_are_the_same_in_every_figure(rows):
    figs = [memory_vs_batch(rows), ratio_vs_batch(rows), time_vs_batch(rows), memory_vs_params(rows)]
    for name in ("gps", "magnitude"):
        seen = {(ln.get_color(), ln.get_marker()) for f in figs for ax in f.axes for ln in ax.get_lines()
                if ln.get_gid() == name}
        assert seen == {(st.style(name).color, st.style(name).marker)}
    assert st.style("gps").color != st.style("fps").color
    assert st.style("my_selector") == st.style("my_selector")  # unknown names get a stable style
    assert sort_names(["train:full", "zeta", "gps", "floor", "fps"]) == ["floor", "fps", "gps", "zeta", "train:full"]


def test_only_oom_and_empty_models_do_not_break(tmp_path):
    rows = [row("gps", "small_vit", b, "select", status="oom") for b in (1, 2)]
    fig = memory_vs_batch(rows)
    assert list(line(panel(fig, "small_vit"), "oom:gps").get_xdata()) == [1, 2]
    assert ratio_vs_batch(rows) is None and time_vs_batch(rows) is None
    assert plot_all([], tmp_path / "none") == []


def test_plot_all_splits_by_device_and_dtype(tmp_path, rows):
    sim = [row(s, "small_vit", b, "select", b * MiB, device="sim:h100", dtype="bfloat16", time_floor_s=1e-3 * b,
               env={"device_memory_bytes": 80 * 1024**3}) for s in ("fps", "gps") for b in (1, 2)]
    small = [r for r in rows if r.model == "small_vit" and r.batch_size < 4]
    drawn = draw(small + sim, tmp_path)
    assert {(d.device, d.dtype) for d in drawn} == {("cpu", "float32"), ("sim:h100", "bfloat16")}
    names = {p.name for d in drawn for p in d.paths}
    assert {"memory_vs_batch-cpu-float32.png", "memory_vs_batch-sim_h100-bfloat16.svg",
            "floor_fraction-sim_h100-bfloat16.png", "time_vs_batch-cpu-float32.svg"} <= names
    assert len(names) == 2 * len(drawn) == len(list(tmp_path.iterdir()))
    assert "time_vs_batch-sim_h100-bfloat16.png" not in names  # simulated rows have no wall time
    for d in drawn:
        for p in d.paths:
            head = p.read_bytes()[:64]
            assert head.startswith(b"\x89PNG") if p.suffix == ".png" else b"<svg" in p.read_bytes()[:600]


def test_title_names_device_dtype_and_versions(rows):
    env = {"torch": "2.14.1", "timm": "1.0.31", "fps_profile": "0.1.0", "git_commit": "0123456789abcdef+dirty",
           "device_name": "NVIDIA H100 80GB HBM3", "device_memory_bytes": 80 * 1024**3}
    sim = [row("fps", "small_vit", 1, "select", MiB, device="sim:h100", dtype="bfloat16", budget="k=1", env=env)]
    title = memory_vs_batch(sim).get_suptitle()
    for part in ("sim:h100 (NVIDIA H100 80GB HBM3, 80.0 GiB), bfloat16, budget k=1", "torch 2.14.1",
                 "timm 1.0.31", "fps-profile 0.1.0", "commit 0123456+dirty"):
        assert part in title


def test_several_budgets_are_separate_groups(tmp_path):
    rows = [row("fps", "small_vit", 1, "select", MiB * k, budget=f"k={k}") for k in (1, 4)]
    rows.append(row(None, "small_vit", 1, "inference", MiB))
    groups = by_group(rows)
    assert list(groups) == [("cpu", "float32", "k=1"), ("cpu", "float32", "k=4")]
    assert [r.peak_allocated_bytes for r in groups[("cpu", "float32", "k=4")]] == [4 * MiB, MiB]
    names = {p.name for p in plot_all(rows, tmp_path, formats=("svg",))}
    assert {"memory_vs_batch-cpu-float32-k_1.svg", "memory_vs_batch-cpu-float32-k_4.svg"} <= names


def test_by_group_keeps_the_last_row_of_a_cell(rows):
    newer = row("gps", "small_vit", 1, "select", 999 * MiB)
    (group,) = by_group(rows + [newer]).values()
    assert series(group, "small_vit")["gps"].rows[1].peak_allocated_bytes == 999 * MiB


def write(path, rows):
    path.write_text("".join(r.to_json() + "\n" for r in rows))
    return path


def test_cli_plot_writes_figures(tmp_path, rows, capsys):
    results = write(tmp_path / "r.jsonl", [r for r in rows if r.model == "small_vit"])
    assert main(["plot", str(results), "--out", str(tmp_path / "figs"), "--format", "png"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed and all(p.endswith(".png") for p in printed)
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == sorted(p.rsplit("/", 1)[1] for p in printed)


@pytest.mark.parametrize("content, message", [
    ("", "has no rows"),
    ("not json\n", "not a valid results row"),
    (json.dumps({"schema": "other"}) + "\n", "schema"),
])
def test_cli_plot_bad_file_is_one_line_error(tmp_path, capsys, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    assert main(["plot", str(path), "--out", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fps-profile: error:") and message in err and err.count("\n") == 1


def test_cli_plot_only_failed_rows(tmp_path, capsys):
    results = write(tmp_path / "r.jsonl", [row("gps", "small_vit", 1, "select", status="error", error="boom")])
    assert main(["plot", str(results), "--out", str(tmp_path / "f")]) == 2
    assert "nothing to plot" in capsys.readouterr().err


def test_cli_plot_missing_file_and_bad_format(tmp_path, rows, capsys):
    assert main(["plot", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    results = write(tmp_path / "r.jsonl", rows[:3])
    assert main(["plot", str(results), "--out", str(tmp_path / "f"), "--format", "png,bmpx"]) == 2
    assert "unknown figure format 'bmpx'" in capsys.readouterr().err
    assert main(["plot", str(results), "--out", str(results)]) == 2  # a file, not a folder
    assert "is a file, not a folder" in capsys.readouterr().err


def test_mixed_gpu_models_are_separate_groups():
    from fps_profile.analysis.series import by_group
    from fps_profile.rows.result import Result

    def row(name, b):
        return Result(selector="fps", model="m", batch_size=b, dtype="float32", device="cuda", phase="select",
                      budget="k=1", scope="gps", peak_allocated_bytes=100 * b, env={"device_name": name})

    mixed = by_group([row("NVIDIA H100", 1), row("NVIDIA A100", 1), row("NVIDIA H100", 2)])
    assert {k[0]: len(v) for k, v in mixed.items()} == {"cuda:NVIDIA H100": 2, "cuda:NVIDIA A100": 1}
    assert list(by_group([row("NVIDIA H100", 1)])) == [("cuda", "float32", None)]


def test_train_floor_rows_are_their_own_series_beside_the_sparse_steps():
    rows = [row(None, "m", b, "train_floor", (100 + b) * MiB) for b in (1, 2, 4)]
    rows += [row("fps", "m", b, "train_step", (110 + b) * MiB) for b in (1, 2, 4)]
    rows += [row(None, "m", b, "inference", 10 * b * MiB) for b in (1, 2, 4)]
    fig = memory_vs_batch(rows)
    ax = fig.axes[0]
    assert xy(line(ax, "train:floor")) == ([1, 2, 4], pytest.approx([101, 102, 104]))
    assert not [ln for ln in ax.get_lines() if ln.get_gid() == "train:fps"]  # sparse steps: breakdown figure
    assert st.label("train:floor").startswith("train floor")
