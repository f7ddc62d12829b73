"""``fps-profile select``: compute a mask on a timm model and print its stats."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fps_profile.cli._args import parse_option, positive_int
from fps_profile.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "select",
        help="choose trainable parameters with a selector and save the mask",
        description="Run one selector on a model (timm, hf:, or your own factory; randomly initialised, "
        "pretrained, or with your weights) with synthetic inputs or a real data set, print the mask's "
        "statistics and optionally save it (safetensors), with where the model, weights and data came from. "
        "The same command (and --seed) always gives the same mask.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--selector", default="fps", help="selector name (see 'fps-profile list')")
    p.add_argument("--model", default="vit_tiny_patch16_224", help="timm model name, language model hf:<name>, "
                   "or package.module:factory / path/to/file.py:factory")
    p.add_argument("--weights", default=None, help="pretrained (timm's), or a .safetensors/.pt/.pth/.bin state dict "
                   "(default: random initialisation)")
    p.add_argument("--data", default=None, help="digits[:classes], an image folder, a .npz/.pt file or a "
                   ".txt/.jsonl text file: selection batches from its training split (default: synthetic)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="images per batch")
    p.add_argument("--num-batches", type=positive_int, default=1, help="batches of selection data")
    p.add_argument("--image-size", type=positive_int, default=None,
                   help="input height and width, the model built for it (default: the model's own)")
    p.add_argument("--seq-len", type=positive_int, default=None,
                   help="tokens per sequence of a language model (default 512)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--k", type=int, default=None, help="per-output-row top-K budget (default 1)")
    budget.add_argument("--fraction", type=float, default=None, help="global top-fraction budget, in (0, 1]")
    p.add_argument("--scope", default="gps", help="gps, gps+lm-head (gps, and a language model's lm_head trained whole), "
                   "all-weights, attention or mlp")
    p.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="selector option, e.g. -o seed=3 for random or -o loss=ce for gps (repeatable)")
    p.add_argument("--amp", default=None, help="autocast the selector's passes: fp16, bf16, or "
                   "fp16-nocache/bf16-nocache (without autocast's cache of cast weight copies)")
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing (timm's "
                   "set_grad_checkpointing) during a backward selector's passes (gps, snip)")
    p.add_argument("--micro-batch", type=positive_int, default=None, metavar="M",
                   help="process each batch in chunks of M samples (statistics and gradients accumulated)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    p.add_argument("--seed", default=0, help="seed of everything random: model init, data, its split, the random "
                   "selector's scores")
    p.add_argument("--out", default=None, help="write the mask here (.safetensors)")
    p.add_argument("--per-tensor", action="store_true", help="print every tensor's count")
    p.add_argument("--json", action="store_true", help="print the stats as JSON")
    p.set_defaults(run=run)


def _breakdown(model, mask, scope: str) -> str:
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
    from fps_profile.measure.backends import backend_for
    from fps_profile.measure.inputs import build_inputs, check_sources
    from fps_profile.models import parse_dtype
    from fps_profile.selection.selectors import create

    options = dict(parse_option(o) for o in args.option)
    create(args.selector, **options)  # fail on a bad selector or option before building anything
    from fps_profile.knobs import parse_amp

    parse_amp(args.amp)
    if args.out and not Path(args.out).parent.is_dir():  # ... and on an --out that cannot be written
        raise UserError(f"cannot write mask to {args.out!r}: directory {str(Path(args.out).parent)!r} does not exist")
    device = _torch_device(args.device, backend_for)
    dtype = parse_dtype(args.dtype)
    if args.fraction is None and args.k is None:
        args.k = 1
    cell = _cell(args)
    check_sources(cell.model, cell.weights, cell.data)  # one line, exit 2, before anything is built
    built = build_inputs(cell, device, dtype)
    model = built.model
    mask = fps_profile.select(model, built.batches, args.selector, k=args.k, fraction=args.fraction,
                              scope=args.scope, amp=args.amp, checkpointing=args.checkpointing,
                              micro_batch=args.micro_batch, seed=options.pop("seed", cell.seed), **options)
    mask.meta.update(model=args.model, **_flat(built.provenance))
    stats = mask.stats()
    if args.out:
        mask.save(args.out)
    if args.json:
        print(json.dumps({"selector": args.selector, "model": args.model, **mask.meta,
                          "out": args.out, "stats": stats.to_dict()}))
    else:
        from fps_profile.rows.schema import knob_label

        knobs = knob_label(parse_amp(args.amp), args.checkpointing, args.micro_batch)
        print(f"{args.selector} on {args.model} ({mask.meta['budget']}, scope {mask.meta['scope']}, "
              f"batch {args.batch_size} x {args.num_batches}, {args.dtype}, {device}{knobs})")
        print(_sources(cell, built.provenance))
        print(stats.format(per_tensor=args.per_tensor))
        print(_breakdown(model, mask, args.scope))
        if args.out:
            print(f"mask written to {args.out}")
    return 0


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


def _torch_device(name: str, backend_for):
    """The torch device ``select`` runs on (a real one: the sim predicts memory, it computes no mask)."""
    from fps_profile.errors import UserError

    backend = backend_for(name)
    if not hasattr(backend, "torch_device"):
        raise UserError(f"select needs a real device to compute a mask, not {name!r} (use cpu or cuda)")
    return backend.torch_device(name)
