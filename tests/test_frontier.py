"""The memory-time frontier: envelope, table, missing time, mixed devices, the figure and the CLI."""

from __future__ import annotations

import itertools
import json
import random

import pytest
from plotrows import MiB, row

from fps_profile.cli import main
from fps_profile.analysis.frontier import (GiB, Point, Setting, choices, envelope, fastest_fitting, markdown, panels,
                                  selection_time, setting_of)
from fps_profile.plots.frontier import frontier_figure
from plotrows import write_results

SIM_ENV = {"device_name": "NVIDIA H100 (simulated)", "device_memory_bytes": 80 * GiB}


def sel(selector, batch, peak, time, *, device="sim:h100", model="small_vit", amp=None, checkpointing=False,
        micro_batch=None, status="ok", **kw):
    """A select row; the knobs are set as attributes, as rows of the knob-aware schema carry them."""
    timing = {"time_floor_s": time} if device.startswith("sim") else {"wall": time}
    r = row(selector, model, batch, "select", peak, status=status, device=device,
            env=SIM_ENV if device.startswith("sim") else None, **timing, **kw)
    r.amp, r.checkpointing, r.micro_batch = amp, checkpointing, micro_batch
    return r


def brute_force_front(coords):
    """The non-dominated (time, peak) pairs: nothing else is at most as slow and as big, and better in one."""
    return {p for p in coords if not any(q[0] <= p[0] and q[1] <= p[1] and q != p for q in coords)}


def test_envelope_is_the_pareto_set():
    rng = random.Random(0)
    for _ in range(30):
        # Small integer ranges give ties in time, in peak and in both.
        coords = [(rng.randint(1, 8), rng.randint(1, 8)) for _ in range(rng.randint(1, 25))]
        pts = [Point("gps", Setting(i + 1), float(t), p, None) for i, (t, p) in enumerate(coords)]
        env = envelope(pts)
        assert {(q.time_s, q.peak_bytes) for q in env} == brute_force_front(set(coords))
        assert len(env) == len({(q.time_s, q.peak_bytes) for q in env})
        assert [q.time_s for q in env] == sorted(q.time_s for q in env)


def test_selection_time_is_time_per_image_times_n():
    cpu = sel("fps", 64, MiB, 2.0, device="cpu", num_batches=2)
    assert selection_time(cpu, 2048) == pytest.approx(2.0 / 128 * 2048)
    old = sel("fps", 64, MiB, 2.0, device="cpu")  # no num_batches: one batch
    assert selection_time(old, 2048) == pytest.approx(64.0)
    sim = sel("fps", 16, MiB, 0.5)
    sim.wall_time_s = 99.0  # sim rows are timed by their FLOP floor, never by a wall time
    assert selection_time(sim, 32) == pytest.approx(1.0)
    assert selection_time(sel("fps", 16, MiB, None), 32) is None


def test_rows_without_knob_fields_are_plain_and_knob_rows_stay_apart():
    plain = row("gps", "small_vit", 8, "select", MiB, device="sim:h100", time_floor_s=1.0)
    assert setting_of(plain) == Setting(8) and Setting(8).label() == "b=8"
    assert Setting(8, "bf16", True, 4).label() == "b=8 +bf16 +ckpt +mb4"
    knobbed = [sel("gps", 8, 2 * MiB, 1.0, amp="bf16"), sel("gps", 8, 3 * MiB, 1.0, checkpointing=True),
               sel("gps", 8, 4 * MiB, 1.0, micro_batch=2)]
    (panel,) = panels([plain, *knobbed])
    assert sorted(p.peak_bytes for p in panel.points) == [MiB, 2 * MiB, 3 * MiB, 4 * MiB]


def gps_rows():
    """A hand-made GPS frontier (GiB, seconds per 2,048 images) and an FPS one."""
    table = [  # batch, knobs, peak GiB, seconds
        (512, {}, 120, 5.0), (64, {}, 30, 10.0), (64, {"checkpointing": True}, 12, 13.0),
        (64, {"amp": "bf16"}, 18, 6.0), (256, {"amp": "bf16", "checkpointing": True, "micro_batch": 8}, 5, 9.0),
    ]
    rows = [sel("gps", b, peak * GiB, t * b / 2048, **k) for b, k, peak, t in table]
    rows += [sel("fps", b, b * GiB // 64, t * b / 2048) for b, t in ((64, 2.0), (512, 1.5))]
    return rows


def test_table_picks_the_fastest_setting_that_fits():
    rows = gps_rows()
    (panel,) = panels(rows, 2048)
    budgets = [4 * GiB, 24 * GiB, 40 * GiB, 80 * GiB, 141 * GiB]
    got = {(c["selector"], c["memory_bytes"] // GiB): c for c in choices(panel, budgets)}
    # By hand from gps_rows(): the fastest under each budget.
    assert not got[("gps", 4)]["fits"] and got[("gps", 4)]["time_s"] is None
    assert (got[("gps", 24)]["batch_size"], got[("gps", 24)]["amp"]) == (64, "bf16")
    assert got[("gps", 24)]["time_s"] == pytest.approx(6.0)
    assert got[("gps", 80)]["peak_bytes"] == 18 * GiB
    assert (got[("gps", 141)]["batch_size"], got[("gps", 141)]["time_s"]) == (512, pytest.approx(5.0))
    assert got[("fps", 4)]["batch_size"] == 64 and got[("fps", 141)]["batch_size"] == 512
    # Against a brute force over every point.
    for (name, gib), c in got.items():
        fit = [p for p in panel.points if p.selector == name and p.peak_bytes <= gib * GiB]
        assert c["time_s"] == (min(p.time_s for p in fit) if fit else None)
    text = markdown([panel], 2048, budgets)
    gps_line = next(line for line in text.splitlines() if line.startswith("| gps"))
    assert gps_line.split("|")[2].strip() == "none fits"
    assert "b=64 +bf16: 6.00 s, 18.0 GiB" in text
    assert fastest_fitting(panel.points, 0) is None


def test_missing_time_is_reported_and_the_rest_drawn():
    rows = gps_rows() + [sel("snip", 8, GiB, None), sel("snip", 16, GiB, None)]
    (panel,) = panels(rows)
    assert sorted(r.batch_size for r in panel.no_time) == [8, 16]
    text = markdown([panel])
    assert "2 ok selection rows of small_vit · sim:h100 · float32 have no time_floor_s" in text
    assert "snip b=8" in text
    assert frontier_figure([panel]) is not None


def test_envelope_and_points_in_the_figure():
    rows = gps_rows() + [sel("gps", 1024, 0, 0, status="oom")]
    (panel,) = panels(rows)
    fig = frontier_figure([panel])
    (ax,) = [a for a in fig.axes if a.get_gid() == "small_vit"]
    lines = {ln.get_gid(): ln for ln in ax.get_lines()}
    env = lines["envelope:gps"]
    want = envelope([p for p in panel.points if p.selector == "gps"])
    assert list(env.get_xdata())[:-1] == pytest.approx([p.time_s for p in want])
    assert list(env.get_ydata())[:-1] == pytest.approx([p.peak_bytes / GiB for p in want])
    assert env.get_drawstyle() == "steps-post"
    drawn = sorted(y for gid, ln in lines.items() if gid and gid.startswith("points:gps:") for y in ln.get_ydata())
    assert drawn == sorted(p.peak_bytes / GiB for p in panel.points if p.selector == "gps")
    assert list(lines["device_memory"].get_ydata()) == [80.0, 80.0]
    assert list(lines["oom:gps"].get_xdata()) == [pytest.approx(7.5)]  # plain GPS: b=64 10 s, b=512 5 s
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("env.device_memory_bytes" in t for t in legend)
    assert {"plain", "amp", "checkpointing", "amp + checkpointing + micro-batches"} <= set(legend)
    assert panel.ooms and "Out of memory (1): gps b=1024" in markdown([panel])


def write(tmp_path, rows, name="rows.jsonl"):
    path = tmp_path / name
    write_results(path, rows)
    return str(path)


def plain_rows(device):
    # Files carry no knob fields before the knob-aware schema: batch sizes alone here.
    return [sel(s, b, (b if s == "gps" else 1) * 64 * MiB, 0.01 * b, device=device)
            for s, b in itertools.product(("fps", "gps"), (8, 32, 128))]


def test_cli_mixed_cpu_and_sim_get_separate_figures_and_json(tmp_path, capsys):
    cpu = write(tmp_path, plain_rows("cpu") + [row(None, "small_vit", 8, "inference", MiB)], "cpu.jsonl")
    sim = write(tmp_path, plain_rows("sim:h100"), "sim.jsonl")
    out = tmp_path / "fig"
    assert main(["frontier", cpu, sim, "--out", str(out), "--format", "png", "--json"]) == 0
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert len(lines) == 2 * 2 * 4  # devices x selectors x budgets
    assert {(c["device"], c["time_kind"]) for c in lines} == {("cpu", "wall"), ("sim:h100", "floor")}
    assert all(c["fits"] and c["batch_size"] == 8 for c in lines if c["selector"] == "fps")
    assert sorted(p.name for p in out.iterdir()) == ["frontier-cpu-float32.png", "frontier-sim_h100-float32.png",
                                                      "frontier.md"]
    assert (out / "frontier-cpu-float32.png").stat().st_size > 10_000
    md = (out / "frontier.md").read_text()
    assert "## small_vit · cpu · float32" in md and "## small_vit · sim:h100 · float32" in md
    assert main(["frontier", cpu, "--out", str(out), "--format", "png", "--memory", "100MiB"]) == 0
    text = capsys.readouterr().out
    assert "fits 100.0 MiB" in text and "| gps " in text and "none fits" in text


def test_cli_says_what_is_missing(tmp_path, capsys):
    some = write(tmp_path, plain_rows("sim:h100") + [sel("snip", 8, GiB, None)], "some.jsonl")
    assert main(["frontier", some, "--out", str(tmp_path / "a"), "--format", "png"]) == 0
    err = capsys.readouterr().err
    assert "note: 1 ok selection rows of small_vit · sim:h100 · float32 have no time_floor_s" in err
    none = write(tmp_path, [sel("gps", 8, GiB, None, device="cpu")], "none.jsonl")
    assert main(["frontier", none, "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "nothing to draw" in err[-1] and "need wall_time_s" in err[-1]
    floor_only = write(tmp_path, [row(None, "small_vit", 8, "inference", MiB)], "floor.jsonl")
    assert main(["frontier", floor_only, "--out", str(tmp_path / "c")]) == 2
    assert "no selection rows" in capsys.readouterr().err


def test_select_rows_record_their_batches():
    """A select row over two batches records it, and its time floor covers both: the same time per image."""
    from fps_profile.rows.cell import Cell
    from fps_profile.measure.runner import measure

    one, two = (measure(Cell(model="test_vit", batch_size=2, phase="select", selector="fps", device="sim:h100",
                             num_batches=n, warmup=0, repeats=1)) for n in (1, 2))
    assert (one.status, two.status) == ("ok", "ok") and (one.num_batches, two.num_batches) == (1, 2)
    assert two.time_floor_s == pytest.approx(2 * one.time_floor_s, rel=0.02)
    assert selection_time(two, 2048) == pytest.approx(selection_time(one, 2048), rel=0.02)


def test_study_grid_runs_every_variant_and_knob_setting():
    """benchmarks/grids/frontier-vit.toml through scripts/frontier_study.py: the commands, counted by hand."""
    import importlib.util
    from pathlib import Path

    from fps_profile.cli import build_parser
    from fps_profile.cli.sweep_cmd import build_grid

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("frontier_study", root / "scripts" / "frontier_study.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    grid_file = str(root / "benchmarks" / "grids" / "frontier-vit.toml")
    cmds = study.commands(grid_file)
    sweeps, last = cmds[:-1], cmds[-1]
    # fps: amp x micro-batch (2 x 4); gps SupCon, gps CE, snip: amp x checkpointing x micro-batch (2 x 2 x 4).
    assert len(sweeps) == 2 * 4 + 3 * 2 * 2 * 4
    settings = {(c[c.index("--selector") + 1], " ".join(c[c.index("--selector") + 2:c.index("--batch-size")]))
                for c in sweeps}
    assert len(settings) == len(sweeps)
    assert ("gps", "-o gps:loss=ce -o gps:views=1 --amp bf16 --checkpointing --micro-batch 8") in settings
    assert not any("--checkpointing" in c for c in sweeps if "fps" in c)
    for c in sweeps:  # a micro-batched cell's batch is above its micro-batch
        if "--micro-batch" in c:
            micro = int(c[c.index("--micro-batch") + 1])
            assert all(int(b) > micro for b in c[c.index("--batch-size") + 1].split(","))
    assert last[:2] == ["frontier", "results/frontier-sim-h100.jsonl"] and last[-2:] == ["--images", "2048"]
    plain = build_parser().parse_args(sweeps[0])  # the [sweep] table is an ordinary, valid grid
    grid = build_grid(plain)
    grid.validate(local_devices=False)
    assert (grid.devices, grid.phases, grid.selectors) == (["sim:h100"], ["select"], ["fps"])
    assert grid.models == ["vit_base_patch16_224", "vit_large_patch16_224"]


def test_other_input_sizes_get_their_own_panel():
    rows = [sel("fps", 8, MiB, 1.0), sel("fps", 8, 2 * MiB, 2.0, image_size=384)]
    assert sorted(p.model for p in panels(rows)) == ["small_vit", "small_vit 384px"]
