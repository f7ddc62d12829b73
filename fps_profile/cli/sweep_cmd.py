"""``fps-profile sweep``: measure a grid of selectors x models x batch sizes x dtypes x devices."""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from dataclasses import fields
from pathlib import Path

from fps_profile.cli._args import comma_list, int_list, parse_bytes, parse_option
from fps_profile.errors import UserError

DEFAULT_OUT = "results/sweep-cpu.jsonl"
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
    p.add_argument("--config", help="TOML file holding the grid (keys as the flags: selectors, models, "
                   "batch_sizes, seq_lens, dtypes, devices, phases, budget, scope, image_size, amp, checkpointing, "
                   "micro_batch, frontier, repeats, ..., [options.<selector>]); "
                   "flags given on the command line override it")
    p.add_argument("--selector", help="comma list of selectors (default fps,gps,magnitude,random)")
    p.add_argument("--model", help="comma list of timm models, or language models hf:<name> / hf:<config.json> "
                   "('fps-profile list models hf:*'; default vit_tiny_patch16_224,vit_small_patch16_224)")
    p.add_argument("--batch-size", help="comma list of batch sizes (default 1,4,16)")
    p.add_argument("--dtype", help="comma list of float32, bfloat16, float16 (default float32)")
    p.add_argument("--device", help="comma list of cpu, cuda[:N], sim[:target] (default cpu)")
    p.add_argument("--phase", help="comma list of select, inference, train_step, train_floor "
                   "(default the first three)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--k", type=int, help="per-row top-K budget of every selection (default 1)")
    budget.add_argument("--fraction", type=float, help="global top-fraction budget instead of --k")
    p.add_argument("--scope", help="parameter scope (default gps)")
    p.add_argument("--option", "-o", action="append", default=[], metavar="SELECTOR:KEY=VALUE",
                   help="selector option, e.g. -o gps:loss=ce -o random:seed=1 (repeatable)")
    p.add_argument("--num-batches", type=int, help="batches of selection data (default 1)")
    p.add_argument("--image-size", type=int, help="input height and width for every model, built for it "
                   "(default: each model's own, e.g. 224, FastViT 256, Inception 299)")
    p.add_argument("--seq-len", help="comma list of sequence lengths (tokens) of the language models (hf:...), "
                   "an axis like --batch-size (default 512); not for image models")
    knobs = p.add_argument_group(
        "knobs (each a comma list crossed with the grid; none/off is the plain setting; rows carry "
        "amp, checkpointing, micro_batch)")
    knobs.add_argument("--amp", metavar="LIST", help="autocast around every phase's passes: fp16, bf16 (a "
                       "GradScaler for fp16 training), or fp16-nocache/bf16-nocache, which turn off autocast's "
                       "cache of cast weight copies (kept for the whole autocast region, it can make a "
                       "forward-only pass such as FPS need more memory than float32); e.g. --amp none,bf16")
    knobs.add_argument("--checkpointing", nargs="?", const="on", metavar="LIST",
                       help="activation checkpointing (timm's set_grad_checkpointing) for GPS, SNIP, the "
                       "train step and the train floor: block activations are recomputed in the backward "
                       "pass; alone it means on, or a list such as off,on")
    knobs.add_argument("--micro-batch", metavar="LIST", help="process every batch in chunks of M samples: "
                       "FPS/Wanda statistics and GPS(CE)/SNIP gradients add up to the whole batch's (GPS's "
                       "SupCon then pairs samples only inside a chunk, and its rows say so); the train step "
                       "accumulates gradients over the chunks, inference is a chunked forward; "
                       "e.g. --micro-batch none,8,32")
    knobs.add_argument("--frontier", action="store_true", help="the preset behind the memory-time frontier: "
                       + "; ".join(f"{k} {','.join(map(str, v))}" for k, v in FRONTIER.items())
                       + " and every combination, phase select, for the chosen "
                       "selectors (default fps,gps,snip); knob flags given override it")
    p.add_argument("--warmup", type=int, help="untimed runs before measuring (default 1)")
    p.add_argument("--repeats", type=int, help="timed runs; the median is reported (default 3)")
    p.add_argument("--memory-budget", help="e.g. 8GiB: a run that needs more is recorded as 'oom' "
                   "(simulated on cpu/sim, enforced by the allocator on cuda)")
    p.add_argument("--max-batch", action="store_true", help="find, per selector and model, the largest "
                   "batch that fits --memory-budget (or the GPU's memory), by doubling then bisection")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per measurement before the worker "
                   "is killed and the cell recorded as 'timeout' (default 1800)")
    p.add_argument("--retry-failed", action="store_true", help="re-measure cells recorded as error or timeout")
    p.add_argument("--executor", default="local", help="local (default) or ray")
    p.add_argument("--address", default=None, help="Ray cluster address for --executor ray (auto, ray://host:port)")
    p.add_argument("--retries", type=int, default=0, help="with --executor ray: retries of a task lost with its node")
    p.add_argument("--ray-accelerator", default=None, metavar="TYPE",
                   help="with --executor ray: run CUDA cells only on GPUs of this Ray accelerator type (e.g. H100)")
    p.add_argument("--out", help=f"results file, JSON lines (default {DEFAULT_OUT})")
    p.add_argument("--plots", metavar="DIR", help="also draw the figures of the results into DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or per-row lines")
    p.add_argument("--json", action="store_true", help="print the summary as JSON lines instead of a table")
    p.set_defaults(run=run)


def _load_config(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"config file {path!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"config file {path!r} is not valid TOML: {exc}") from None
    return data.get("sweep", data)


def build_grid(args: argparse.Namespace):
    """The :class:`~fps_profile.sweep.Grid` from a TOML config and flags (flags win)."""
    from fps_profile.sweep import Grid

    conf = _load_config(args.config) if args.config else {}
    known = {f.name for f in fields(Grid)} | {"out", "timeout", "max_batch", "executor", "address", "retries",
                                               "frontier"}
    unknown = sorted(set(conf) - known)
    if unknown:
        raise UserError(f"unknown key {unknown[0]!r} in config {args.config!r} (known: {', '.join(sorted(known))})")
    grid = Grid(**{k: v for k, v in conf.items() if k in {f.name for f in fields(Grid)}})
    for key in ("amp", "checkpointing", "micro_batch"):  # a scalar in TOML is a one-setting axis
        if key in conf and not isinstance(conf[key], list):
            setattr(grid, key, [conf[key]])
    if isinstance(grid.memory_budget, str):
        grid.memory_budget = parse_bytes(grid.memory_budget)
    if isinstance(grid.batch_sizes, (str, int)):
        grid.batch_sizes = int_list(str(grid.batch_sizes))
    for flag, attr in (("selector", "selectors"), ("model", "models"), ("dtype", "dtypes"),
                       ("device", "devices"), ("phase", "phases")):
        if getattr(args, flag):
            setattr(grid, attr, comma_list(getattr(args, flag)))
    if isinstance(grid.seq_lens, (str, int)):
        grid.seq_lens = int_list(str(grid.seq_lens), "sequence length")
    if args.batch_size:
        grid.batch_sizes = int_list(args.batch_size)
    if args.seq_len:
        grid.seq_lens = int_list(args.seq_len, "sequence length")
    if args.k is not None:
        grid.budget = f"k={args.k}"
    elif args.fraction is not None:
        grid.budget = f"fraction={args.fraction}"
    for flag in ("scope", "num_batches", "warmup", "repeats", "image_size"):
        if getattr(args, flag) is not None:
            setattr(grid, flag, getattr(args, flag))
    if args.memory_budget:
        grid.memory_budget = parse_bytes(args.memory_budget)
    if args.frontier or conf.get("frontier"):
        for key, values in FRONTIER.items():
            if key not in conf:
                setattr(grid, key, list(values))
        if "phases" not in conf and not args.phase:
            grid.phases = ["select"]
        if "selectors" not in conf and not args.selector:
            grid.selectors = ["fps", "gps", "snip"]
    for flag in ("amp", "checkpointing", "micro_batch"):
        if getattr(args, flag) is not None:
            setattr(grid, flag, comma_list(getattr(args, flag)) or [None])
    for text in args.option:
        sel, sep, kv = text.partition(":")
        if not sep:
            raise UserError(f"option must look like selector:key=value, not {text!r}")
        key, value = parse_option(kv)
        grid.options.setdefault(sel, {})[key] = value
    for key in ("out", "timeout", "executor", "address", "retries"):
        if key in conf and getattr(args, key) in (None, {"timeout": 1800.0, "executor": "local", "retries": 0}.get(key)):
            setattr(args, key, conf[key])
    if conf.get("max_batch"):
        args.max_batch = True
    return grid


def run(args: argparse.Namespace) -> int:
    from fps_profile.executors import get_executor
    from fps_profile.summary import format_summary, summarize
    from fps_profile.sweep import run_sweep

    grid = build_grid(args)
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
