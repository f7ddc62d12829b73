"""Results files: round trip, torn lines, foreign or malformed files."""

from __future__ import annotations

import json

import pytest

from fps_profile.errors import UserError
from fps_profile.rows.result import SCHEMA, Result
from fps_profile.rows.store import append_result, read_results


def _row(**kw) -> Result:
    base = dict(selector="fps", model="m", batch_size=2, dtype="float32", device="cpu", phase="select")
    return Result(**(base | kw))


def test_round_trip_keeps_every_field(tmp_path):
    path = tmp_path / "r.jsonl"
    rows = [_row(peak_allocated_bytes=123, wall_times_s=[0.1, 0.2, 0.3], wall_time_s=0.2, env={"host": "h"}),
            _row(selector=None, phase="inference", status="oom", error="OutOfMemoryError: x")]
    for r in rows:
        append_result(path, r)
    back = read_results(path)
    assert [b.__dict__ for b in back] == [r.__dict__ for r in rows]
    assert all(json.loads(line)["schema"] == SCHEMA for line in path.read_text().splitlines())


def test_torn_last_line_is_ignored_then_trimmed(tmp_path):
    path = tmp_path / "r.jsonl"
    append_result(path, _row(batch_size=1))
    with open(path, "a") as f:
        f.write('{"selector": "fps", "model": "m", "bat')  # a write cut short by a kill
    assert [r.batch_size for r in read_results(path)] == [1]
    append_result(path, _row(batch_size=2))
    assert [r.batch_size for r in read_results(path)] == [1, 2]
    assert all(json.loads(line) for line in path.read_text().splitlines())


@pytest.mark.parametrize("content, message", [
    ("not json\n", "not a valid results row"),
    ('{"schema": "other/1", "model": "m"}\n', "another tool or version"),
    ("[1, 2]\n", "not a valid results row"),
    (json.dumps({"schema": SCHEMA, "model": "m"}) + "\n", "missing field"),
])
def test_bad_files_fail_with_one_line(tmp_path, content, message):
    path = tmp_path / "r.jsonl"
    path.write_text(content)
    with pytest.raises(UserError, match=message) as info:
        read_results(path)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_results(tmp_path / "nope.jsonl")
    assert read_results(tmp_path / "nope.jsonl", missing_ok=True) == []


def test_selector_options_are_part_of_the_cell():
    """GPS with cross-entropy is another cell than GPS as published, in the same results file."""
    from fps_profile.rows.cell import Cell
    from fps_profile.analysis.summary import summarize

    ce = Cell(model="m", batch_size=2, selector="gps", options=(("loss", "ce"), ("views", 1)))
    plain = Cell(model="m", batch_size=2, selector="gps")
    assert ce.key() != plain.key() and ce.key()[0] == "gps[loss=ce,views=1]" and plain.key()[0] == "gps"
    row = ce.empty_row()
    assert row.options == {"loss": "ce", "views": 1} and row.key() == ce.key()
    assert plain.empty_row().options is None and plain.empty_row().key() == plain.key()
    # a row written before options were recorded keeps its key
    old = Result.from_dict({k: v for k, v in plain.empty_row().__dict__.items() if k != "options"})
    assert old.key() == plain.key()
    # the floor and full fine-tuning never carry options
    assert Cell(model="m", batch_size=2, phase="inference", options=(("loss", "ce"),)).empty_row().options is None
    rows = [r for r in (ce.empty_row(peak_allocated_bytes=30), plain.empty_row(peak_allocated_bytes=60))]
    assert [s.what for s in summarize(rows)] == ["gps", "gps[loss=ce,views=1]"]
    assert [s.peak_vs_gps for s in summarize(rows)] == [1.0, 0.5]
