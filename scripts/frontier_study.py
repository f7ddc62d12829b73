"""Run a memory-time frontier study from a grid file, then draw its frontier.

Usage: python scripts/frontier_study.py GRID.toml [--dry-run]

GRID.toml holds a ``[sweep]`` table (an ordinary ``fps-profile sweep --config`` grid) and a ``[frontier]``
table: the knob values (``amp``, ``checkpointing``, ``micro_batch``; "none", false and 0 unset), the batch
sizes of micro-batched cells, and ``[[frontier.variant]]`` entries (selector, options, the knobs that apply).
Every variant x knob setting is one ``fps-profile sweep --config GRID.toml ...`` into the grid's results
file; then ``fps-profile frontier`` draws it. ``--dry-run`` prints the commands instead.
See benchmarks/grids/frontier-vit.toml.
"""

from __future__ import annotations

import itertools
import shlex
import sys
import tomllib

UNSET = {"amp": "none", "checkpointing": False, "micro_batch": 0}


def knob_flags(knobs: dict) -> list[str]:
    """``{"amp": "bf16", "checkpointing": True, "micro_batch": 8} -> ["--amp", "bf16", "--checkpointing", ...]``."""
    flags = []
    for name, value in knobs.items():
        if value == UNSET[name]:
            continue
        flag = "--" + name.replace("_", "-")
        flags += [flag] if value is True else [flag, str(value)]
    return flags


def commands(path: str) -> list[list[str]]:
    """The ``fps-profile`` argument lists of the study in ``path``: every sweep, then the frontier."""
    with open(path, "rb") as f:
        conf = tomllib.load(f)
    sweep, study = conf["sweep"], conf["frontier"]
    out = []
    for variant in study["variant"]:
        sel = variant["selector"]
        options = [x for k, v in variant.get("options", {}).items() for x in ("-o", f"{sel}:{k}={v}")]
        names = [k for k in UNSET if k in variant["knobs"]]
        for values in itertools.product(*(study[k] for k in names)):
            knobs = dict(zip(names, values))
            micro = knobs.get("micro_batch", 0)
            batches = [b for b in (study["micro_batch_batch_sizes"] if micro else sweep["batch_sizes"]) if b > micro]
            if batches:
                out.append(["sweep", "--config", path, "--selector", sel, *options, *knob_flags(knobs),
                            "--batch-size", ",".join(map(str, batches)), "--no-progress"])
    out.append(["frontier", sweep["out"], "--out", study["plots"], "--images", str(study["images"])])
    return out


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    todo = commands(argv[0])
    if "--dry-run" in argv[1:]:
        for args in todo:
            print(shlex.join(["fps-profile", *args]))
        return 0
    from fps_profile.cli import main as cli

    for args in todo:
        print(shlex.join(["fps-profile", *args]), file=sys.stderr)
        rc = cli(args)
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
