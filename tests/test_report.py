"""The report's tables, headline and figure links agree with the rows."""

from __future__ import annotations

import pytest
from plotrows import BATCHES, MiB, find, grid, row

from fps_profile.cli import main
from fps_profile.plots.report import HEADLINE_HEAD, build_report, headline, model_tables, write_report
from fps_profile.units import fmt_bytes, fmt_ratio, fmt_seconds


@pytest.fixture(scope="module")
def rows():
    return grid()


def table(rows, model, caption_start):
    """A table of model_tables as {row label: {batch: cell}}."""
    for caption, head, body in model_tables(rows, model):
        if caption.startswith(caption_start):
            batches = [int(h.split()[-1]) for h in head[1:]]
            return {r[0]: dict(zip(batches, r[1:])) for r in body}
    raise AssertionError(f"no table {caption_start!r}")


def test_peak_table_cells_are_the_rows_peaks(rows):
    t = table(rows, "big_vit", "Peak memory")
    for label, sel, phase in (("GPS", "gps", "select"), ("FPS", "fps", "select"),
                              ("inference floor", None, "inference"), ("full fine-tuning", None, "train_step"),
                              ("sparse step (GPS mask)", "gps", "train_step")):
        for b in BATCHES:
            r = find(rows, model="big_vit", selector=sel, batch=b, phase=phase)
            assert t[label][b] == (fmt_bytes(r.peak_allocated_bytes) if r.status == "ok" else "OOM")
    assert t["GPS"][8] == "OOM"
    assert list(t)[:2] == ["inference floor", "FPS"]


def test_missing_and_failed_cells(rows):
    t = table(rows, "small_vit", "Peak memory")
    assert t["random"][4] == "-"
    assert t["magnitude"][2] == "error"
    times = table(rows, "small_vit", "Median wall time")
    assert times["GPS"][4] == fmt_seconds(find(rows, model="small_vit", selector="gps", batch=4).wall_time_s)


def test_ratio_tables_divide_by_fps_and_the_floor(rows):
    vs_fps = table(rows, "big_vit", "Selection peak ÷ FPS")
    vs_floor = table(rows, "big_vit", "Peak ÷ inference floor")
    assert "FPS" not in vs_fps and "inference floor" not in vs_floor
    for b in (1, 2, 4):
        gps = find(rows, model="big_vit", selector="gps", batch=b).peak_allocated_bytes
        fps = find(rows, model="big_vit", selector="fps", batch=b).peak_allocated_bytes
        floor = find(rows, model="big_vit", selector=None, batch=b, phase="inference").peak_allocated_bytes
        assert vs_fps["GPS"][b] == fmt_ratio(gps / fps)
        assert vs_floor["GPS"][b] == fmt_ratio(gps / floor)
    assert vs_fps["GPS"][8] == "OOM"
    t_fps = table(rows, "big_vit", "Selection time ÷ FPS")
    assert t_fps["GPS"][2] == fmt_ratio(0.02 / 0.05)


def test_headline_at_largest_common_batch(rows):
    lines = {r[1]: dict(zip(HEADLINE_HEAD, r)) for r in headline(rows, "big_vit")}
    assert set(lines) == {"GPS", "magnitude", "random"}
    gps = lines["GPS"]
    g4, f4, g1, f1 = (find(rows, model="big_vit", selector=s, batch=b).peak_allocated_bytes
                      for s, b in (("gps", 4), ("fps", 4), ("gps", 1), ("fps", 1)))
    assert gps["batch"] == "4"  # batch 8 is OOM for GPS
    assert gps["peak ratio"] == f"**{fmt_ratio(g4 / f4)}**"
    assert (gps["peak"], gps["reference peak"]) == (fmt_bytes(g4), fmt_bytes(f4))
    assert gps["ratio at smallest batch"] == f"{fmt_ratio(g1 / f1)} (batch 1)"
    assert gps["time ratio"] == fmt_ratio(0.02 / 0.05)
    assert gps["out of memory from batch"] == "8 / -"
    assert lines["magnitude"]["out of memory from batch"] == "- / -"


def test_headline_counts_peaks_above_device_memory_and_drops_empty_columns():
    env = {"device_memory_bytes": 100 * MiB}
    rows = [row(s, "small_vit", b, "select", (b * 60 if s == "gps" else 10) * MiB, device="sim:h100", env=env)
            for s in ("fps", "gps") for b in (1, 2, 4)]
    (gps,) = headline(rows, "small_vit")
    assert gps[-1] == "2 / -" and gps[HEADLINE_HEAD.index("time ratio")] == "-"
    text = build_report(rows)
    head = next(line for line in text.splitlines() if line.startswith("| model"))
    assert "time ratio" not in head and "out of memory from batch" in head and "sim:h100" not in head


def test_report_sections_environment_and_no_figures(rows):
    sim = [row("fps", "small_vit", 1, "select", MiB, device="sim:h100", dtype="bfloat16", time_floor_s=2e-3,
               env={"device_memory_bytes": 80 * 1024**3, "torch": "2.14.1"})]
    text = build_report(rows + sim, source="r.jsonl")
    assert "from `r.jsonl`" in text
    for heading in ("## Environment", "## Headline", "## cpu · float32", "### big_vit (4,000,000 parameters)",
                    "## sim:h100 · bfloat16", "Compute floor"):
        assert heading in text
    assert "| device memory | - " in text and "80.0 GiB" in text
    assert "0123456" in text and "## Figures" not in text
    assert "- cpu float32 small_vit batch 2 select:magnitude: error: no message" in text


def test_write_report_embeds_figures_by_relative_path(tmp_path, rows):
    rows = [r for r in rows if r.model == "small_vit"]
    out, figures = write_report(rows, tmp_path / "report.md", formats=("png",))
    text = out.read_text()
    assert figures and all(p.parent == tmp_path / "report_figures" for p in figures)
    for p in figures:
        assert f"](report_figures/{p.name})" in text
    out2, figs2 = write_report(rows, tmp_path / "r2.md", figures_dir=tmp_path / "sub" / "figs", formats=("png",))
    assert f"](sub/figs/{figs2[0].name})" in out2.read_text()


def test_cli_report(tmp_path, rows, capsys):
    results = tmp_path / "r.jsonl"
    results.write_text("".join(r.to_json() + "\n" for r in rows))
    out = tmp_path / "rep.md"
    assert main(["report", str(results), "--out", str(out), "--no-figures"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert "## Headline" in out.read_text() and not (tmp_path / "rep_figures").exists()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["report", str(empty), "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("fps-profile: error: results file")
    assert main(["report", str(results), "--out", str(tmp_path / "no" / "rep.md")]) == 2
    assert "does not exist" in capsys.readouterr().err
