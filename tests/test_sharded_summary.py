"""The sweep's summary keeps world sizes apart: each rank's ratios against the same world size's rows."""

from __future__ import annotations

from fps_profile.analysis.summary import summarize
from fps_profile.rows.cell import Cell


def _row(selector: str, world_size: int, peak: int, offload=None):
    row = Cell(model="hf:llama-tiny", batch_size=1, seq_len=8, phase="select", selector=selector, device="sim:h100",
               world_size=world_size, offload=offload).empty_row()
    row.status, row.peak_allocated_bytes = "ok", peak
    return row


def test_ratios_compare_rows_of_one_world_size_and_the_label_names_it():
    rows = [_row("fps", 2, 300), _row("gps", 2, 1000), _row("fps", 8, 100), _row("gps", 8, 400),
            _row("fps", 1, 50, offload="cpu")]
    lines = {s.what: s for s in summarize(rows)}
    assert set(lines) == {"fps ws=2", "gps ws=2", "fps ws=8", "gps ws=8", "fps +offload-cpu"}
    assert lines["fps ws=2"].peak_vs_gps == 300 / 1000
    assert lines["fps ws=8"].peak_vs_gps == 100 / 400  # not against world size 2's GPS
    assert lines["fps +offload-cpu"].peak_vs_gps is None  # no GPS row with offload


def test_unsharded_rows_keep_their_labels():
    lines = summarize([_row("fps", 1, 10), _row("gps", 1, 20)])
    assert [s.what for s in lines] == ["fps", "gps"] and lines[0].peak_vs_gps == 0.5
