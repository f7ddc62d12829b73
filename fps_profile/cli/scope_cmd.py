"""``fps-profile scope``: the role every parameter of a timm model gets under a scope."""

from __future__ import annotations

import argparse
import json

from fps_profile.cli.args import positive_int


def add_parser(sub) -> None:
    p = sub.add_parser(
        "scope",
        help="show which tensors of a model a scope ranks, trains whole or freezes",
        description="Build a timm model (on the meta device: no memory, no weights) and print the role "
        "each parameter gets under a scope: ranked (entry by entry, by the selector and the budget), "
        "trainable (the whole tensor) or frozen, with the reason, grouped over repeated blocks.",
        epilog="Example: fps-profile scope resnet50 --scope gps",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("model", help="timm model name, or language model hf:<name> / hf:<path>.json")
    p.add_argument("--scope", default="gps",
                   help="gps, gps+lm-head (gps, and a language model's lm_head trained whole), "
                   "linear (gps, Linear weights only), all-weights, attention or mlp (see 'fps-profile list scopes')")
    p.add_argument("--image-size", type=positive_int, default=None,
                   help="input height and width to build the model for (default: its own)")
    p.add_argument("--json", action="store_true", help="print the report as JSON (every tensor's role too)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from fps_profile.models import meta_model
    from fps_profile.selection.scope import get_scope
    from fps_profile.selection.scope_report import scope_report

    scope = get_scope(args.scope)  # an unknown scope fails before the model is built
    model = meta_model(args.model, image_size=args.image_size)
    report = scope_report(model, scope, args.model)
    print(json.dumps(report.to_dict()) if args.json else report.format())
    return 0
