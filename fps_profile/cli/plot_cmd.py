"""``fps-profile plot``: draw the figures of a results file (PNG and SVG)."""

from __future__ import annotations

import argparse
import sys

from fps_profile.cli.args import check_folder, comma_list, positive_int
from fps_profile.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "plot",
        help="draw memory and time figures from a results file",
        description="Draw, from a results file of any device (cpu, cuda or sim), every figure its rows "
        "support: peak memory vs batch size, each selector's peak relative to the reference, peak vs "
        "model size, selection time vs batch size and, where rows have FLOPs, the compute floor. "
        "One set of figures per (device, dtype) in the files; where rows are sharded (--world-size), the "
        "per-rank peak vs world size once per dtype over every device, each card's memory drawn.",
        epilog="Example: fps-profile plot results/sweep-cpu.jsonl --out figures/; "
        "fps-profile plot results/fsdp-sim-h100-8b.jsonl results/fsdp-sim-h200-8b.jsonl "
        "--figure memory_vs_world_size --out plots/fsdp",
    )
    p.add_argument("results", nargs="+", help="results files (JSON lines) written by 'fps-profile sweep'; "
                   "several are read as one")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the figures (created if missing)")
    p.add_argument("--format", default="png,svg", help="comma list of image formats (default png,svg)")
    p.add_argument("--reference", default="fps", help="selector the ratio figures divide by (default fps)")
    p.add_argument("--batch", type=positive_int, default=None,
                   help="batch size of the memory-vs-model-size figure (default: largest common to all models)")
    p.add_argument("--figure", default=None, metavar="LIST",
                   help="comma list of the figures to draw, by file stem (e.g. memory_vs_batch,"
                   "memory_vs_world_size; default every one the rows support)")
    p.set_defaults(run=run)


def load_rows(path: str):
    """The rows of a results file; a clear error if it has none."""
    from fps_profile.rows.store import read_results

    rows = read_results(path)
    if not rows:
        raise UserError(f"results file {path!r} has no rows (run 'fps-profile sweep --out {path}' first)")
    return rows


def warn_missing_reference(rows, reference: str) -> None:
    if not any(r.phase == "select" and r.selector == reference for r in rows):
        print(f"fps-profile: note: no {reference!r} selection rows, so no ratio to it "
              "(choose another with --reference)", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from fps_profile.plots import plot_all

    formats = [f.lower() for f in comma_list(args.format)]
    if not formats:
        raise UserError("no figure format given")
    check_folder(args.out, "figures")
    only = comma_list(args.figure) if args.figure is not None else None
    rows = [r for path in args.results for r in load_rows(path)]
    if only is None or "ratio_vs_batch" in only:
        warn_missing_reference(rows, args.reference)
    paths = plot_all(rows, args.out, formats=formats, reference=args.reference, batch=args.batch, only=only)
    for path in paths:
        print(path)
    if not paths:
        files = ", ".join(map(repr, args.results))
        if only:
            raise UserError(f"no {', '.join(only)} figure from {files}: its rows do not support it")
        raise UserError(f"nothing to plot in {files}: no row is ok or out of memory")
    return 0
