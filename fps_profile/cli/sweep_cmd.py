"""``fps-profile sweep``: measure a grid of selectors x models x batch sizes x dtypes x devices."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fps_profile.cli.args import check_folder, comma_list, parse_bytes, parse_option
from fps_profile.errors import UserError
from fps_profile.rows import schema
from fps_profile.units import parse_seconds

DEFAULT_OUT = "results/sweep-cpu.jsonl"
#: How a sweep runs (not what it measures): flag, else the config's key, else this.
RUN_DEFAULTS = {"out": None, "timeout": 1800.0, "executor": "local", "address": None, "retries": 0}
#: ``sweep --frontier``: plain / bf16 / checkpointing / micro-batches and their combinations.
FRONTIER = {"amp": ["none", "bf16"], "checkpointing": ["off", "on"], "micro_batch": ["none", 8, 32, 128]}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="measure peak memory and time over a grid (resumable, one process per measurement)",
        description="Measure every cell of selectors x models x batch sizes x dtypes x devices: the "
        "selection itself, the inference floor (a no_grad forward) and a sparse and a full "
        "fine-tuning step. Each measurement runs in a fresh process (warm-up, one memory-tracked "
        "run, timed repeats, median). Rows are appended to --out as they are measured; cells "
        "already there are skipped, so an interrupted sweep resumes where it stopped. "
        "Without flags it runs the default CPU grid (a few minutes on 2 cores).",
        epilog="Example: fps-profile sweep --selector fps,gps --model vit_base_patch16_224 "
        "--batch-size 1,8,32,64 --dtype float32,bfloat16 --device cuda --out gpu.jsonl",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from fps_profile.cli.grid_config import SETTINGS

    p.add_argument("--config", metavar="FILE", help="TOML file holding the grid, top level or in a [sweep] table "
                   "(keys: " + ", ".join(a.grid for a in schema.AXES if a.grid and a.name not in ("options",
                                                                                                  "memory_budget"))
                   + ", " + ", ".join(SETTINGS) + ", [options.<selector>]). A key takes what its flag takes: a "
                   "list, one value (a one-item list) or a comma-separated string; numbers as numbers or text, names "
                   "as text, sizes and durations with their units; any other type is an error naming the key. "
                   "Flags given on the command line override it")
    grid_flags = p.add_argument_group(
        "the grid (each comma list is an axis crossed with the others; rows carry every value)")
    for a in schema.AXES:
        if a.flag is None:
            continue
        kwargs = {"nargs": "?", "const": "on"} if isinstance(a.default, bool) else {}
        shown = a.grid_value()
        default = ",".join(map(_shown, shown)) if isinstance(shown, list) else _shown(shown)
        meta = "LIST" if a.swept else "VALUE"
        grid_flags.add_argument(a.flag, dest=a.name, metavar=meta, help=f"{a.doc} ({'comma list, ' if a.swept else ''}"
                                f"default {default if default not in (None, '') else 'none'})", **kwargs)
    grid_flags.add_argument("--k", metavar="LIST", help="per-row top-K budgets of every selection: K entries "
                            "trained in every output row of each ranked tensor, e.g. 1,2,4,8 (default 1)")
    grid_flags.add_argument("--fraction", metavar="LIST", help="global top-fraction budgets: the fraction of all "
                            "ranked entries trained, 0 < f <= 1 (0.01 = 1%%, not a percentage), e.g. 0.01,0.001 "
                            "(with --k, both kinds are crossed with the grid)")
    grid_flags.add_argument("--shira", metavar="LIST", help="SHiRA budgets: R*(m+n) entries of every ranked m x n "
                            "tensor, e.g. 2,8 (budget shira:R; crossed with --k and --fraction when given)")
    p.add_argument("--option", "-o", action="append", default=[], metavar="SELECTOR:KEY=VALUE",
                   help="selector option, e.g. -o gps:loss=ce -o random:seed=1 (repeatable)")
    p.add_argument("--frontier", action="store_true", help="the preset behind the memory-time frontier: "
                   + "; ".join(f"{k} {','.join(map(str, v))}" for k, v in FRONTIER.items())
                   + " and every combination, phase select, for the chosen "
                   "selectors (default fps,gps,snip); knob flags given override it")
    p.add_argument("--memory-budget", metavar="SIZE", help="a size with its unit, e.g. 8GiB (GiB = 2^30 "
                   "bytes, MiB = 2^20; GB = 10^9, MB = 10^6; a bare number is an error): a run that needs more "
                   "is recorded as 'oom' (simulated on cpu/sim, enforced by the allocator on cuda); default none")
    p.add_argument("--max-batch", action="store_true", help="find, per selector and model, the largest "
                   "batch that fits --memory-budget (or the GPU's memory), by doubling then bisection")
    p.add_argument("--timeout", metavar="DURATION", help="time per measurement before the worker is killed "
                   "and the cell recorded as 'timeout': seconds (1800), or with a unit: 30s, 500ms, 5min, 2h "
                   "(default 1800 seconds)")
    p.add_argument("--retry-failed", action="store_true", help="re-measure cells recorded as error or timeout")
    p.add_argument("--executor", help="local (default) or ray")
    p.add_argument("--address", default=None, help="Ray cluster address for --executor ray (auto, ray://host:port)")
    p.add_argument("--retries", help="with --executor ray: retries of a task lost with its node, an integer >= 0 "
                   "(default 0)")
    p.add_argument("--ray-accelerator", default=None, metavar="TYPE",
                   help="with --executor ray: run CUDA cells only on GPUs of this Ray accelerator type (e.g. H100)")
    p.add_argument("--out", help=f"results file, JSON lines (default {DEFAULT_OUT})")
    p.add_argument("--plots", metavar="DIR", help="also draw the figures of the results into DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or per-row lines")
    p.add_argument("--json", action="store_true", help="print the summary as JSON lines instead of a table")
    p.set_defaults(run=run)


def _shown(value) -> str:
    """A default as the flag takes it: none, on/off, or the value."""
    return "none" if value in (None, "") else ("on" if value else "off") if isinstance(value, bool) else str(value)


def build_grid(args: argparse.Namespace):
    """The :class:`~fps_profile.run.grid.Grid` from a TOML config and flags (flags win).

    Every axis of the cell schema is read the same way: the flag, else the TOML key (the
    Grid field), else the default; values are parsed by the axis, so a bad one fails here.
    The settings that are not axes (``out``, ``timeout`` ...) land in ``args``, parsed.
    """
    from fps_profile.cli.grid_config import SETTINGS, axis_value, by_grid, load_config, options_value, setting_value
    from fps_profile.run.grid import Grid

    conf = load_config(args.config) if args.config else {}
    axes = by_grid()
    where = f"config {args.config!r}"
    grid = Grid()
    settings = {}
    for key, value in conf.items():
        if key == "options":
            grid.options = options_value(value, where)
        elif key in axes:
            setattr(grid, key, axis_value(axes[key], value, f"{where}: {key}"))
        else:
            settings[key] = setting_value(key, value, where)
    if args.frontier or settings.get("frontier"):
        for key, values in FRONTIER.items():
            if key not in conf:
                setattr(grid, key, axis_value(axes[key], list(values), "--frontier"))
        if "phases" not in conf and not args.phase:
            grid.phases = ["select"]
        if "selectors" not in conf and not args.selector:
            grid.selectors = ["fps", "gps", "snip"]
    for a in schema.AXES:
        value = getattr(args, a.name, None) if a.flag else None
        if value is not None:
            setattr(grid, a.grid, axis_value(a, value, a.flag))
    budgets = [f"k={k}" for k in (comma_list(args.k) if args.k else [])]
    budgets += [f"fraction={f}" for f in (comma_list(args.fraction) if args.fraction else [])]
    budgets += [f"shira:{r}" for r in (comma_list(args.shira) if args.shira else [])]
    if budgets:
        grid.budget = [axis_value(schema.axis("budget"), b, "--k" if b[0] == "k" else "--fraction")[0]
                       for b in budgets]
    grid.memory_budget = (parse_bytes(args.memory_budget, "--memory-budget") if args.memory_budget is not None
                          else settings.get("memory_budget"))
    for text in args.option:
        sel, sep, kv = text.partition(":")
        if not sep:
            raise UserError(f"option must look like selector:key=value, not {text!r}")
        key, value = parse_option(kv)
        grid.options.setdefault(sel, {})[key] = value
    for key, default in RUN_DEFAULTS.items():  # flag, else the config's key, else the default
        if getattr(args, key, None) is None:
            setattr(args, key, settings.get(key, default))
    args.timeout = parse_seconds(args.timeout, "--timeout")
    args.retries = SETTINGS["retries"](args.retries, "--retries")
    if settings.get("max_batch"):
        args.max_batch = True
    return grid


def run(args: argparse.Namespace) -> int:
    from fps_profile.run.executors import get_executor
    from fps_profile.analysis.summary import format_summary, summarize
    from fps_profile.run.sweep import run_sweep

    grid = build_grid(args)
    if args.plots:
        check_folder(args.plots, "figures")  # now, not after the sweep
    out = Path(args.out or DEFAULT_OUT)
    if args.out is None:
        out.parent.mkdir(parents=True, exist_ok=True)
    kwargs = ({"address": args.address, "retries": args.retries, "accelerator_type": args.ray_accelerator}
              if args.executor == "ray" else {})
    executor = get_executor(args.executor, **kwargs)
    if args.max_batch:
        from fps_profile.cli.maxbatch_report import run_max_batch

        return run_max_batch(grid, out, executor, args)
    report = run_sweep(grid, out, executor=executor, timeout_s=args.timeout, retry_failed=args.retry_failed,
                       progress=not args.no_progress)
    if args.json:
        for line in summarize(report.rows):
            print(json.dumps(line.__dict__))
    else:
        print(format_summary(report.rows))
        failed = sum(r.status != "ok" for r in report.rows)
        print(f"\n{report.measured} measured, {report.skipped} already in {out}, {failed} not ok; "
              f"{report.seconds:.0f} s. Rows: {out}", file=sys.stderr)
    if args.plots:
        from fps_profile.plots import plot_all

        for path in plot_all(report.rows, args.plots):
            print(f"figure: {path}", file=sys.stderr)
    return 0
