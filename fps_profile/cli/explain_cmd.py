"""``fps-profile explain``: what a row's peak is made of, and which modules hold it."""

from __future__ import annotations

import argparse

from fps_profile.cli.args import positive_int


def add_parser(sub) -> None:
    from fps_profile.analysis.cells import keys

    p = sub.add_parser(
        "explain",
        help="print what a row's peak is made of (weights, activations, gradients, ...) and who holds it",
        description="Print the breakdown of one row's peak: bytes per category (weights, buffers, inputs, "
        "gradients, optimizer state, mask, activations saved for backward, temporaries; cuBLAS workspaces "
        "and allocator slack on sim), the phase of the run at the peak (forward, backward, optimizer, "
        "scoring), each phase's own peak, and the largest holders (module path and category). Without "
        "--cell, one line per row: its cell (model, batch, dtype, device, and every other axis some row sets, "
        "e.g. seq_len), its peak, the phase and the largest category. Rows without a breakdown "
        "(older files, failed measurements) say so.",
        epilog="Example: fps-profile explain results/sweep-cpu.jsonl --cell \"what=gps model=vit_small_patch16_224 "
        "batch=16\"\n  keys: what (a selector, floor, train:full, train:<selector>), batch (batch_size), and every "
        "axis a row records: " + ", ".join(k for k in keys() if k not in ("what", "batch")) + "\n  values are "
        "parsed as the axis's flag parses them (seq_len=512, amp=bf16, checkpointing=on, dtype=bf16; none for unset)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("results", help="results file (JSON lines) written by 'fps-profile sweep'")
    p.add_argument("--cell", metavar="TERMS", help="which row(s): key=value terms separated by spaces or "
                   "commas; every row that matches is explained")
    p.add_argument("--top", type=positive_int, default=10, help="largest holders to list (default 10)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from fps_profile.cli.plot_cmd import load_rows
    from fps_profile.analysis.explain import explain, find_rows, overview

    rows = load_rows(args.results)
    if not args.cell:
        print(overview(rows))
        return 0
    print("\n\n".join(explain(r, top=args.top) for r in find_rows(rows, args.cell)))
    return 0
