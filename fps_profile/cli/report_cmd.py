"""``fps-profile report``: a markdown report of a results file, with its figures."""

from __future__ import annotations

import argparse

from fps_profile.cli.args import check_file, check_folder, comma_list


def add_parser(sub) -> None:
    p = sub.add_parser(
        "report",
        help="write a markdown report (tables, headline ratios, figures) of a results file",
        description="Write a markdown report of a results file: the environment, headline ratios "
        "(each selector's peak over the reference's at the largest common batch), per model tables "
        "of peak memory, time and their ratios over batch sizes, and the figures, drawn next to the "
        "report and embedded by relative path.",
        epilog="Example: fps-profile report results/sweep-cpu.jsonl --out report.md",
    )
    p.add_argument("results", help="results file (JSON lines) written by 'fps-profile sweep'")
    p.add_argument("--out", default="report.md", help="report file (default report.md)")
    p.add_argument("--figures", metavar="DIR", help="folder for the figures (default <report name>_figures "
                   "beside the report)")
    p.add_argument("--no-figures", action="store_true", help="tables only, no figures")
    p.add_argument("--format", default="png,svg", help="comma list of figure formats (default png,svg; "
                   "the report embeds the PNG)")
    p.add_argument("--reference", default="fps", help="selector the ratios divide by (default fps)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from fps_profile.cli.plot_cmd import load_rows, warn_missing_reference
    from fps_profile.plots.report import write_report

    from pathlib import Path

    check_file(args.out, "report")
    if not args.no_figures:  # the figures' folder, as write_report chooses it
        check_folder(args.figures or Path(args.out).with_name(f"{Path(args.out).stem}_figures"), "figures")
    rows = load_rows(args.results)
    warn_missing_reference(rows, args.reference)
    out, figures = write_report(rows, args.out, figures_dir=args.figures, draw_figures=not args.no_figures,
                                formats=[f.lower() for f in comma_list(args.format)] or ["png"],
                                reference=args.reference,
                                source=args.results)
    print(out)
    for path in figures:
        print(path)
    return 0
