"""``fps-profile overlap``: how far masks agree, from mask files or from several selectors run on one model."""

from __future__ import annotations

import argparse
import json

from fps_profile.cli.args import comma_list, parse_option, positive_int
from fps_profile.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "overlap",
        help="compare masks: Jaccard index of the ranked entries, rank correlation of the scores",
        description="Compare two or more masks, pair by pair: the Jaccard index of the entries each ranks "
        "(per tensor and in total), beside that of the tensors trained whole (biases, the classifier: the "
        "same in every mask of a scope), and, for selectors run here, the Spearman correlation of their "
        "scores. Give mask files, or --selector A,B,... to run each on --model with the same seeded batches.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("masks", nargs="*", metavar="MASK",
                   help="mask files (.safetensors, from 'fps-profile select --out')")
    p.add_argument("--selector", default=None,
                   help="selectors to run and compare, comma-separated (e.g. fps,gps,wanda)")
    p.add_argument("--model", default="vit_tiny_patch16_224", help="timm model name, or language model hf:<name>")
    p.add_argument("--batch-size", type=positive_int, default=8, help="images per batch")
    p.add_argument("--num-batches", type=positive_int, default=1, help="batches of selection data")
    p.add_argument("--image-size", type=positive_int, default=None,
                   help="input height and width (default: the model's)")
    p.add_argument("--seq-len", type=positive_int, default=None, help="tokens per sequence of a language model")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--k", type=int, default=None, help="per-output-row top-K budget (default 1)")
    budget.add_argument("--fraction", type=float, default=None, help="global top-fraction budget, in (0, 1]")
    p.add_argument("--scope", default="gps", help="gps, gps+lm-head, all-weights, attention or mlp")
    p.add_argument("--option", "-o", action="append", default=[], metavar="SELECTOR:KEY=VALUE",
                   help="selector option, e.g. -o random:seed=1 -o gps:loss=ce (repeatable)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    p.add_argument("--seed", type=int, default=0, help="seed of the model's initial weights and the synthetic data")
    p.add_argument("--per-tensor", action="store_true", help="a table per pair with every ranked tensor")
    p.add_argument("--json", action="store_true", help="print one JSON object (always per tensor)")
    p.set_defaults(run=run)


def _options(texts: list[str], selectors: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {s: {} for s in selectors}
    for text in texts:
        sel, sep, kv = text.partition(":")
        if not sep:
            raise UserError(f"option must look like selector:key=value, not {text!r}")
        if sel not in out:
            raise UserError(f"option {text!r} is for {sel!r}, which is not among --selector {','.join(selectors)}")
        key, value = parse_option(kv)
        out[sel][key] = value
    return out


def _from_selectors(args) -> tuple[dict, dict, set, str]:
    """Masks and scores of every selector on one model and the same seeded batches; the ranked tensors; a title."""
    import fps_profile
    from fps_profile.measure.backends import backend_for
    from fps_profile.models import create_model, parse_dtype, synthetic_batches
    from fps_profile.rows.schema import selector_variant
    from fps_profile.selection.scope import Role, assign_roles
    from fps_profile.selection.selectors import create

    selectors = list(dict.fromkeys(comma_list(args.selector)))
    options = _options(args.option, selectors)
    for sel in selectors:
        create(sel, **options[sel])  # a bad selector or option fails before anything is built
    if len(selectors) < 2:
        raise UserError(f"--selector needs two or more different selectors to compare, not {args.selector!r}")
    if args.k is None and args.fraction is None:
        args.k = 1
    backend = backend_for(args.device)
    if not hasattr(backend, "torch_device"):
        raise UserError(f"overlap runs the selectors on a real device, not {args.device!r} (use cpu or cuda)")
    import torch

    with torch.random.fork_rng(devices=[]):  # the same model for the same --seed, the caller's RNG untouched
        torch.manual_seed(args.seed)
        model = create_model(args.model, device=backend.torch_device(args.device), dtype=parse_dtype(args.dtype),
                             image_size=args.image_size)
    batches = synthetic_batches(model, args.batch_size, args.num_batches, seed=args.seed,
                                image_size=args.image_size, seq_len=args.seq_len)
    ranked = {n for n, (role, _, _) in assign_roles(model, args.scope).items() if role is Role.RANKED}
    masks, scores = {}, {}
    for sel in selectors:
        name = selector_variant(sel, options[sel] or None)
        scores[name] = {}
        masks[name] = fps_profile.select(model, batches, sel, k=args.k, fraction=args.fraction, scope=args.scope,
                                         keep_scores=scores[name], **options[sel])
    budget = next(iter(masks.values())).meta["budget"]
    title = (f"{args.model} ({budget}, scope {args.scope}, batch {args.batch_size} x {args.num_batches}, "
             f"seed {args.seed}, {args.dtype}, {args.device}): ranked tensors from the scope")
    return masks, scores, ranked, title


def _from_files(paths: list[str]) -> tuple[dict, dict, None, str]:
    from fps_profile.selection.mask import Mask

    masks = {}
    for i, path in enumerate(paths):
        masks[path if path not in masks else f"{path} ({i + 1})"] = Mask.load(path)
    about = "; ".join(f"{n}: {m.meta.get('selector', '?')} {m.meta.get('budget', '')} scope "
                      f"{m.meta.get('scope', '?')}".strip() for n, m in masks.items())
    return masks, {}, None, f"{about}. Ranked tensors: those some mask trains in part (files do not record the scope)"


def _num(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def _text(pairs, masks, per_tensor: bool) -> str:
    from fps_profile.analysis.summary import markdown_table

    body = []
    for p in pairs:
        r, w = p.overlap.ranked_part, p.overlap.whole_part
        body.append([p.a, p.b, _num(r.jaccard), f"{r.both:,} of {r.union:,}", _num(w.jaccard),
                     _num(p.correlation.total if p.correlation else None)])
    out = [markdown_table(["A", "B", "ranked Jaccard", "ranked shared", "whole-tensor Jaccard", "Spearman"], body)]
    if per_tensor:
        for p in pairs:
            corr = p.correlation.tensors if p.correlation else {}
            rows = [[t.name, "x".join(map(str, t.shape)), f"{t.a:,}", f"{t.b:,}", f"{t.both:,}", _num(t.jaccard),
                     _num(corr.get(t.name))] for t in p.overlap.tensors if t.ranked]
            out += ["", f"{p.a} vs {p.b}:", "",
                    markdown_table(["tensor", "shape", "A", "B", "both", "Jaccard", "Spearman"], rows)]
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    from fps_profile.selection.agreement import agreements

    if args.masks and args.selector:
        raise UserError("give mask files or --selector, not both")
    if args.selector:
        masks, scores, ranked, title = _from_selectors(args)
    elif len(args.masks) >= 2:
        masks, scores, ranked, title = _from_files(args.masks)
    else:
        raise UserError("give two or more mask files, or --selector A,B to run selectors on --model")
    pairs = agreements(masks, scores, ranked)
    if args.json:
        print(json.dumps({"about": title, "masks": {n: m.meta for n, m in masks.items()},
                          "pairs": [p.to_dict() for p in pairs]}))
        return 0
    print(title)
    print("Jaccard index |A & B| / |A | B| of the ranked entries, and of the tensors trained whole or frozen (the "
          "same in every mask of a scope); Spearman: the scores' rank correlation, per tensor, weighted by size.\n")
    print(_text(pairs, masks, args.per_tensor))
    return 0
