"""``fps-profile list``: registered selectors, scopes, and models by wildcard (timm, and the shipped
``hf:`` language-model configs)."""

from __future__ import annotations

import argparse
import sys

from fps_profile.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser("list", help="list selectors, scopes or timm models",
                       description="List the registered selectors with what they need, the "
                       "parameter scopes, or model names matching a wildcard: the language models "
                       "shipped as configs ('list models hf:*'), then timm's.")
    p.add_argument("what", nargs="?", default="selectors", choices=["selectors", "scopes", "models"])
    p.add_argument("pattern", nargs="?", default="*", help="shell-style wildcard, e.g. 'vit_*patch16_224'")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.what == "selectors":
        from fps_profile.selection.selectors import get, list_selectors

        broken = 0
        for name in list_selectors(args.pattern):
            try:
                cls = get(name)
            except UserError as exc:  # one broken plugin does not hide the others
                broken += 1
                print(f"{name:<12} {'broken':<9} {exc}")
                continue
            needs = "backward" if cls.needs_backward else ("forward" if cls.needs_data else "no data")
            print(f"{name:<12} {needs:<9} {cls.describe()}")
        if broken:
            print(f"fps-profile: note: {broken} selector plugin(s) failed to load; the others work", file=sys.stderr)
    elif args.what == "scopes":
        from fps_profile.selection.scope import SCOPES

        for name in SCOPES.names(args.pattern):
            print(f"{name:<12} {SCOPES.get(name).about}")
        print("(norms by type, position tables and the classifier from timm's metadata on every family; "
              "'fps-profile scope MODEL' shows a model's roles)")
    else:
        import fnmatch

        import timm

        from fps_profile.models.hf import PREFIX, shipped

        for name, source in shipped().items():
            if fnmatch.fnmatch(PREFIX + name, args.pattern):
                print(f"{PREFIX + name:<18} {source}")
        for name in timm.list_models(args.pattern):
            print(name)
    return 0
