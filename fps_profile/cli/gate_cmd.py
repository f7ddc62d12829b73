"""``fps-profile gate``: fail when a results file got worse than a baseline."""

from __future__ import annotations

import argparse
import sys

from fps_profile.cli.args import check_file, comma_list
from fps_profile.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "gate",
        help="compare two results files cell by cell; exit 1 when a metric got worse",
        description="Compare CURRENT against BASELINE cell by cell (selector, model, batch size, dtype, "
        "device, phase, budget) and print a markdown table of every metric that changed, with old, new "
        "and ratio. Exit 0 when nothing got worse beyond its tolerance, 1 when something did, 2 on a "
        "missing or malformed file. Lower is better for every metric but accuracy. Default tolerances: exact 0% "
        "(FLOPs, time floor, bytes predicted by the sim backend), memory 5% (measured bytes), "
        "time 10% (wall time, seconds), quality 1% (the finetune phase's accuracy and losses). A wall "
        "time is worse only when it is beyond its tolerance AND the "
        "two rows' repeats (wall_times_s) differ: their confidence intervals of the median do not overlap "
        "(as asv judges; with fewer than 8 repeats the interval is the repeats' range). Where a backend's "
        "times are noise (cpu: a CPU shared with other processes) time is not gated unless named with "
        "--metric (e.g. --metric time); the report says so. Parameter counts and the peak's breakdown "
        "(bytes per category, the phase of the peak) are shown when they change but never gated. "
        "Cells present in one file only are listed, and so are the versions (torch, timm, fps-profile, "
        "python, CUDA) and device names that differ between the files.",
        epilog="Example: fps-profile gate benchmarks/baseline.jsonl current.jsonl --strict\n"
        "         fps-profile gate old.jsonl new.jsonl --tolerance time=20% --tolerance memory=2%\n"
        "         fps-profile gate cpu-old.jsonl cpu-new.jsonl --metric memory,time   # CPU times too",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("baseline", metavar="BASELINE", help="results file (JSON lines) of the reference run")
    p.add_argument("current", metavar="CURRENT", help="results file (JSON lines) of the run under test")
    p.add_argument("--tolerance", "-t", action="append", default=[], metavar="[KIND=]VALUE",
                   help="allowed increase as a percentage, with its %% (5%%; a bare 5 or 0.05 is an error): "
                   "without KIND it sets time and memory; KIND is exact, memory, time or a metric name such "
                   "as wall_time_s (repeatable; defaults exact=0%%, memory=5%%, time=10%%)")
    p.add_argument("--metric", "-m", metavar="LIST",
                   help="compare only these metrics or kinds (comma list, e.g. exact or "
                   "peak_allocated_bytes,flops); a time named here is gated on every backend, a CPU's "
                   "too; default all but the times of backends whose times are noise")
    p.add_argument("--strict", action="store_true",
                   help="also fail when a BASELINE cell is missing from CURRENT or a metric disappeared")
    p.add_argument("--out", metavar="FILE", help="also write the markdown report to FILE "
                   "(e.g. $GITHUB_STEP_SUMMARY)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from fps_profile.analysis.gate import DEFAULT_TOLERANCES, compare, parse_tolerance, select_metrics, to_markdown
    from fps_profile.rows.store import read_results

    if args.out:
        check_file(args.out, "report")
    tolerances = dict(DEFAULT_TOLERANCES)
    for spec in args.tolerance:
        parse_tolerance(spec, tolerances)
    metrics = select_metrics(comma_list(args.metric)) if args.metric else None
    if metrics is not None and not metrics:
        raise UserError("--metric names no metric")
    files = {}
    for name, path in (("BASELINE", args.baseline), ("CURRENT", args.current)):
        rows = read_results(path)
        if not rows:
            raise UserError(f"{name} {path!r} holds no result rows")
        files[name] = rows
    report = compare(files["BASELINE"], files["CURRENT"], tolerances, metrics)
    text = to_markdown(report, strict=args.strict)
    print(text)
    if args.out:
        try:
            with open(args.out, "a") as f:
                f.write(text + "\n")
        except OSError as exc:
            raise UserError(f"cannot write {args.out!r}: {exc.strerror or exc}") from None
    sys.stdout.flush()
    return 1 if report.failed(strict=args.strict) else 0
