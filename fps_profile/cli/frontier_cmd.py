"""``fps-profile frontier``: peak memory against selection time per selector and knob setting, and the table."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fps_profile.cli.args import check_folder, comma_list, parse_bytes, positive_int
from fps_profile.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "frontier",
        help="the memory-time frontier: which selector and setting selects fastest within a memory budget",
        description="Draw, per model, dtype and device, the peak memory of every selection row against its "
        "time to select on N images (the row's time per image x N: median wall time on cpu/cuda, the FLOP "
        "floor on sim), with each selector's lower-left envelope and the device's memory; and write "
        "frontier.md: per selector, the fastest setting (batch size, amp, checkpointing, micro-batch) whose "
        "peak fits each memory budget. Rows without knob fields count as plain.",
        epilog="Example: fps-profile frontier results/frontier-sim-h100.jsonl --out plots/frontier",
    )
    p.add_argument("results", nargs="+", help="results files (JSON lines) written by 'fps-profile sweep'")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the figures and frontier.md")
    p.add_argument("--images", type=positive_int, default=2048,
                   help="N of 'time to select on N images' (default 2048)")
    p.add_argument("--memory", default="24GiB,40GiB,80GiB,141GiB",
                   help="comma list of memory budgets of the table, sizes with their units (GiB = 2^30 bytes, "
                   "GB = 10^9; default 24GiB,40GiB,80GiB,141GiB)")
    p.add_argument("--format", default="png,svg", help="comma list of image formats (default png,svg)")
    p.add_argument("--json", action="store_true", help="print the table as JSON lines instead of markdown")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import matplotlib

    from fps_profile.cli.plot_cmd import load_rows
    from fps_profile.analysis.frontier import choices, markdown, notes, panels
    from fps_profile.plots import RC, figure_folder, save
    from fps_profile.plots.frontier import frontier_figure

    budgets = [parse_bytes(b, "--memory") for b in comma_list(args.memory)]
    if not budgets:
        raise UserError("no memory budget given (e.g. --memory 24GiB,80GiB)")
    formats = [f.lower() for f in comma_list(args.format)]
    check_folder(args.out, "figures and frontier.md")
    rows = [r for path in args.results for r in load_rows(path)]
    what = " ".join(repr(p) for p in args.results)
    if not any(r.phase == "select" for r in rows):
        raise UserError(f"no selection rows in {what}: the frontier needs phase 'select' rows")
    found = panels(rows, args.images)
    for panel in found:
        if panel.no_time:  # notes() starts with the rows that have no time
            print(f"fps-profile: note: {notes(panel)[0]}", file=sys.stderr)
    if not any(p.points for p in found):
        missing = sum(len(p.no_time) for p in found)
        raise UserError(f"nothing to draw from {what}: " + (
            f"none of its {missing} ok selection rows has a time (cpu/cuda rows need wall_time_s, "
            "sim rows time_floor_s)" if missing else "no selection row is ok"))
    out = figure_folder(args.out, formats)
    groups: dict[tuple, list] = {}
    for panel in found:
        groups.setdefault((panel.device, panel.dtype, panel.budget), []).append(panel)
    with matplotlib.rc_context(RC):
        for (device, dtype, budget), group in groups.items():
            fig = frontier_figure(group, args.images)
            if fig is not None:
                for path in save(fig, out, ("frontier", device, dtype, budget), formats):
                    print(f"figure: {path}", file=sys.stderr)
    text = markdown(found, args.images, budgets)
    table = Path(out) / "frontier.md"
    try:
        table.write_text(text)
    except OSError as exc:
        raise UserError(f"cannot write {str(table)!r}: {exc.strerror or exc}") from None
    print(f"table: {table}", file=sys.stderr)
    if args.json:
        for panel in found:
            for c in choices(panel, budgets):
                print(json.dumps(c))
    else:
        print(text, end="")
    return 0
