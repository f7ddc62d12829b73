"""``fps-profile select --device sim[:target]``: a selection predicted on a simulated GPU.

A mask needs real scores, so on the sim no mask is computed (``--out`` is an error). What the
sim knows is printed instead: the selection's predicted peak (``max_memory_allocated`` of that
GPU), FLOPs and time floor, measured as a sweep's ``select`` row is, and the mask's trainable
counts, which the budget and the scope fix without any score (:mod:`fps_profile.sim.masks`):
exact per tensor for a per-row ``k``; for a global ``fraction`` exact in total, split over the
tensors in proportion to their sizes (the real split depends on the scores).
"""

from __future__ import annotations

import argparse
import json

from fps_profile.errors import UserError


def run_on_sim(args: argparse.Namespace, options: dict, breakdown) -> int:
    """Predict the selection of ``args`` on ``args.device`` and print it (``select``'s output, predicted).

    Args:
        args: ``select``'s arguments.
        options: The selector's options, parsed.
        breakdown: ``(model, mask, scope) -> str``, the line ``select`` prints under the counts.
    """
    from fps_profile.measure.phases import BudgetSpec
    from fps_profile.measure.runner import measure
    from fps_profile.measure.targets import get_target
    from fps_profile.models import parse_dtype
    from fps_profile.rows.cell import Cell
    from fps_profile.rows.schema import knob_label
    from fps_profile.rows.values import parse_amp, parse_budget
    from fps_profile.selection.budget import make_budget
    from fps_profile.sim.fake import build_model
    from fps_profile.sim.masks import synthetic_mask
    from fps_profile.units import fmt_bytes, fmt_seconds

    if args.out:
        raise UserError(f"a mask needs real tensors: on {args.device} nothing is selected, only predicted "
                        "(peak memory, FLOPs, trainable counts); write a mask with --device cpu or cuda")
    target = get_target(args.device)
    budget = parse_budget(f"shira:{args.shira}" if getattr(args, "shira", None) else
                          f"k={args.k}" if args.fraction is None else f"fraction={args.fraction}")
    spec = BudgetSpec.parse(budget)
    about = make_budget(**spec.select_kwargs()).describe()
    model = build_model(args.model, parse_dtype(args.dtype), args.image_size)  # meta: shapes, no storage
    mask = synthetic_mask(model, spec, args.scope)
    cell = Cell(model=args.model, batch_size=args.batch_size, phase="select", selector=args.selector,
                dtype=args.dtype, device=args.device, budget=budget, scope=args.scope,
                options=tuple(sorted(options.items())), image_size=args.image_size, seq_len=args.seq_len,
                amp=parse_amp(args.amp), checkpointing=args.checkpointing, micro_batch=args.micro_batch,
                num_batches=args.num_batches, warmup=0, repeats=1)
    row = measure(cell)
    if row.status == "error":
        raise UserError((row.error or "the sim failed").removeprefix("UserError: "))
    stats = mask.stats()
    if args.json:
        print(json.dumps({"selector": args.selector, "model": args.model, "device": args.device, "budget": about,
                          "scope": args.scope, "predicted": True, "status": row.status,
                          "peak_allocated_bytes": row.peak_allocated_bytes, "flops": row.flops,
                          "time_floor_s": row.time_floor_s, "device_memory_bytes": target.memory_bytes,
                          "stats": stats.to_dict()}))
        return 0
    knobs = knob_label(parse_amp(args.amp), args.checkpointing, args.micro_batch)
    print(f"{args.selector} on {args.model} ({about}, scope {args.scope}, batch {args.batch_size} x "
          f"{args.num_batches}, {args.dtype}, {args.device}{knobs}): predicted, no mask computed")
    card = f" of the {target.description}'s {fmt_bytes(target.memory_bytes)}" if target.memory_bytes else ""
    if row.status == "oom":
        print(f"peak: out of memory{card} ({row.error})")
    else:
        floor = "" if not row.time_floor_s else ", time floor " + (
            fmt_seconds(row.time_floor_s) if row.time_floor_s >= 1e-3 else f"{row.time_floor_s:.3g} s")
        flops = f"; {row.flops:,} FLOPs" if row.flops is not None else ""
        print(f"peak {fmt_bytes(row.peak_allocated_bytes)} ({row.peak_allocated_bytes:,} bytes){card}"
              f"{flops}{floor}")
    print(stats.format(per_tensor=args.per_tensor))
    if spec.fraction is not None:
        print("(a global fraction: the total is exact; per tensor, a split in proportion to sizes)")
    print(breakdown(model, mask, args.scope))
    return 0
