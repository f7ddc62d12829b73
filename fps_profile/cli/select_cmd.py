"""``fps-profile select``: compute a mask on a timm model and print its stats."""

from __future__ import annotations

import argparse
import json

from fps_profile.cli.args import check_file, parse_option, positive_int
from fps_profile.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "select",
        help="choose trainable parameters with a selector and save the mask",
        description="Run one selector on a model (timm, hf:, or your own factory; randomly initialised, "
        "pretrained, or with your weights) with synthetic inputs or a real data set, print the mask's "
        "statistics and optionally save it (safetensors), with where the model, weights and data came from. "
        "The same command (and --seed) always gives the same mask. On --device sim[:target] the selection "
        "is predicted instead (peak memory, FLOPs, counts; no mask).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--selector", default="fps", help="selector name (see 'fps-profile list')")
    p.add_argument("--model", default="vit_tiny_patch16_224", help="timm model name, language model hf:<name>, "
                   "or package.module:factory / path/to/file.py:factory")
    p.add_argument("--weights", default=None, help="pretrained (timm's), or a .safetensors/.pt/.pth/.bin state dict "
                   "(default: random initialisation)")
    p.add_argument("--data", default=None, help="digits[:classes], an image folder, a .npz/.pt file or a "
                   ".txt/.jsonl text file: selection batches from its training split (default: synthetic)")
    p.add_argument("--batch-size", type=positive_int, default=8,
                   help="samples per batch (images, or sequences of a language model)")
    p.add_argument("--num-batches", type=positive_int, default=1, help="batches of selection data")
    p.add_argument("--image-size", type=positive_int, default=None,
                   help="input height and width, the model built for it (default: the model's own)")
    p.add_argument("--seq-len", type=positive_int, default=None,
                   help="tokens per sequence of a language model (default 512)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--k", type=int, default=None, help="per-output-row top-K budget (default 1)")
    budget.add_argument("--fraction", type=float, default=None,
                        help="global top-fraction budget: the fraction of all ranked "
                        "entries trained, in (0, 1] (0.01 = 1%%, not a percentage)")
    budget.add_argument("--shira", type=positive_int, default=None, metavar="R",
                        help="R*(m+n) entries of every ranked m x n tensor: PEFT SHiRA's size (budget shira:R)")
    p.add_argument("--scope", default="gps",
                   help="gps, gps+lm-head (gps, and a language model's lm_head trained whole), "
                   "linear (gps, Linear weights only), all-weights, attention, mlp or shira (what PEFT SHiRA can "
                   "train; see 'fps-profile list scopes')")
    p.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="selector option, e.g. -o seed=3 for random or -o loss=ce for gps (repeatable)")
    p.add_argument("--amp", default=None, help="autocast the selector's passes: fp16, bf16, or "
                   "fp16-nocache/bf16-nocache (without autocast's cache of cast weight copies)")
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing (timm's "
                   "set_grad_checkpointing) during a backward selector's passes (gps, snip)")
    p.add_argument("--micro-batch", type=positive_int, default=None, metavar="M",
                   help="process each batch in chunks of M samples (statistics and gradients accumulated)")
    p.add_argument("--device", default="cpu", help="cpu, cuda[:N], or sim[:target] (h100, h200, a100): on "
                   "the sim nothing is selected; it predicts the selection's peak memory, FLOPs and the mask's "
                   "trainable counts (exact for k; for a fraction, exact in total), and --out is an error")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    p.add_argument("--seed", default=0, help="seed of everything random: model init, data, its split, the random "
                   "selector's scores")
    p.add_argument("--out", default=None, help="write the mask here (.safetensors)")
    p.add_argument("--peft-adapter", default=None, metavar="DIR",
                   help="also write the mask as an untrained PEFT SHiRA adapter to DIR (new or empty; needs peft), "
                   "ready for PeftModel.from_pretrained; select with --shira R (and --scope shira on an image model)")
    p.add_argument("--peft-partial", action="store_true",
                   help="with --peft-adapter: leave out what SHiRA cannot train (listed in DIR) instead of failing")
    p.add_argument("--per-tensor", action="store_true", help="print every tensor's count")
    p.add_argument("--json", action="store_true", help="print the stats as JSON")
    p.set_defaults(run=run)


def breakdown_line(model, mask, scope: str) -> str:
    """Ranked entries vs whole trainable tensors, and the count without the classifier
    head (the figure GPS and FPS papers quote, e.g. 0.195% of ViT-B/16 at k=1)."""
    from fps_profile.models.parts import find_classifier
    from fps_profile.selection.scope import Role, assign_roles

    roles = assign_roles(model, scope)
    ranked = sum(mask.count(n) for n, (r, _, _) in roles.items() if r is Role.RANKED)
    whole = sum(mask.count(n) for n, (r, _, _) in roles.items() if r is Role.TRAINABLE)
    classifier = find_classifier(model)
    body = [n for n in mask if not classifier.owns(n)]
    chosen, total = sum(mask.count(n) for n in body), sum(mask.entry(n).numel for n in body)
    return (f"ranked entries {ranked:,}; whole tensors {whole:,} (biases, head, layer scales); "
            f"without the head: {chosen:,} of {total:,} ({100.0 * chosen / max(total, 1):.3f}%)")


def run(args: argparse.Namespace) -> int:
    import fps_profile
    from fps_profile.knobs import parse_amp
    from fps_profile.measure.backends import backend_for
    from fps_profile.measure.inputs import build_inputs, check_sources
    from fps_profile.models import parse_dtype
    from fps_profile.models.hf import check_name_seq_len, is_hf_name
    from fps_profile.selection.budget import make_budget
    from fps_profile.selection.scope import get_scope
    from fps_profile.selection.selectors import create

    # Everything that can be checked is checked before a model is built.
    options = dict(parse_option(o) for o in args.option)
    create(args.selector, **options)  # the selector, and its options against their defaults' types
    parse_amp(args.amp)
    get_scope(args.scope)
    if args.peft_partial and not args.peft_adapter:
        raise UserError("--peft-partial applies to --peft-adapter DIR")
    if args.fraction is None and args.k is None and args.shira is None:
        args.k = 1
    make_budget(args.k, args.fraction, f"shira:{args.shira}" if args.shira else None)
    dtype = parse_dtype(args.dtype)
    cell = _cell(args)
    check_sources(cell.model, cell.weights, cell.data)  # one line, exit 2, before anything is built
    if is_hf_name(args.model):
        check_name_seq_len(args.model, args.seq_len)
    elif args.seq_len is not None:
        raise UserError(f"--seq-len applies to language models (hf:...), not to image model {args.model!r}")
    backend = backend_for(args.device)
    backend.check(args.device)
    if backend.predicts:
        if args.peft_adapter:
            raise UserError("--peft-adapter needs a mask: select on cpu or cuda (the sim predicts memory, it "
                            "computes no mask)")
        from fps_profile.cli.select_sim import run_on_sim

        return run_on_sim(args, options, breakdown_line)
    if args.out:
        check_file(args.out, "mask")
    if args.peft_adapter:
        _check_adapter_dir(args.peft_adapter)
    device = backend.torch_device(args.device)
    built = build_inputs(cell, device, dtype)
    model = built.model
    mask = fps_profile.select(model, built.batches, args.selector, k=args.k, fraction=args.fraction,
                              budget=f"shira:{args.shira}" if args.shira else None, scope=args.scope,
                              amp=args.amp, checkpointing=args.checkpointing, micro_batch=args.micro_batch,
                              seed=options.pop("seed", cell.seed), **options)
    mask.meta.update(model=args.model, **_flat(built.provenance))
    stats = mask.stats()
    plan = None
    if args.peft_adapter:  # first: a mask SHiRA cannot hold fails before anything is written
        from fps_profile.integrations.peft_write import write_adapter

        plan = write_adapter(model, mask, args.peft_adapter, partial=args.peft_partial)
    if args.out:
        mask.save(args.out)
    if args.json:
        adapter = None if plan is None else {"dir": args.peft_adapter, "r": plan.r, "targets": len(plan.targets),
                                             "modules_to_save": list(plan.modules_to_save),
                                             "left_out": [name for name, _ in plan.left_out]}
        print(json.dumps({"selector": args.selector, "model": args.model, **mask.meta,
                          "out": args.out, "stats": stats.to_dict(), "peft_adapter": adapter}))
    else:
        from fps_profile.rows.schema import knob_label

        knobs = knob_label(parse_amp(args.amp), args.checkpointing, args.micro_batch)
        print(f"{args.selector} on {args.model} ({mask.meta['budget']}, scope {mask.meta['scope']}, "
              f"batch {args.batch_size} x {args.num_batches}, {args.dtype}, {device}{knobs})")
        print(_sources(cell, built.provenance))
        print(stats.format(per_tensor=args.per_tensor))
        print(breakdown_line(model, mask, args.scope))
        if args.out:
            print(f"mask written to {args.out}")
        if plan is not None:
            left = f"; left out {len(plan.left_out)} tensor(s), listed there" if plan.left_out else ""
            print(f"PEFT SHiRA adapter (r={plan.r}, {len(plan.targets)} Linear layers, modules_to_save "
                  f"{', '.join(plan.modules_to_save) or 'none'}{left}) written to {args.peft_adapter}")
    return 0


def _check_adapter_dir(path: str) -> None:
    """Fail before selecting on an adapter directory that cannot be written, or without peft."""
    from fps_profile.integrations.peft import require_peft
    from fps_profile.integrations.peft_write import check_adapter_dir

    check_adapter_dir(path)
    require_peft()


def _flat(provenance: dict) -> dict[str, str]:
    """The provenance as a mask's string metadata: ``weights_source``, ``weights_sha256``,
    ``weights_reinitialized``, ``data``, ``data_sha256``, ``data_classes`` ... (lists comma-joined)."""
    out = {f"weights_{k}": v for k, v in provenance.get("weights", {}).items()}
    out.update(provenance.get("data", {}))
    return {k: ",".join(map(str, v)) if isinstance(v, list) else str(v) for k, v in out.items()}


def _sources(cell, provenance: dict) -> str:
    """``weights: ... · data: ... · seed N``: where the model's weights and the batches came from."""
    w, d = provenance.get("weights"), provenance.get("data")
    weights = f"{w['source']} (sha256 {str(w['sha256'])[:12]}" + (
        f", {len(w['reinitialized'])} tensor(s) left at random init" if w["reinitialized"] else "") + ")" \
        if w else "random initialisation"
    data = f"{d['data']} ({d.get('data_train')} train / {d.get('data_val')} held out)" if d and "data_train" in d \
        else d["data"] if d else "synthetic"
    return f"weights: {weights} · data: {data} · seed {cell.seed}"


def _cell(args: argparse.Namespace):
    """The select cell the arguments describe (paths resolved, the seed parsed, by the cell schema)."""
    from fps_profile.rows.cell import Cell
    from fps_profile.rows.schema import axis

    values = {n: axis(n).parse(getattr(args, n)) for n in ("model", "weights", "data", "seed")}
    return Cell(**values, batch_size=args.batch_size, dtype=args.dtype, device=args.device, phase="select",
                selector=args.selector, image_size=args.image_size, seq_len=args.seq_len,
                num_batches=args.num_batches)
