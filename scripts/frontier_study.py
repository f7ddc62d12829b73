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


class StudyError(ValueError):
    """A study file that cannot be read: one line naming the key."""


def _list(table: dict, key: str, kind: type, where: str, *, minimum=None) -> list:
    """``table[key]`` as a list of ``kind`` (one value is a one-item list, as in a sweep config)."""
    if key not in table:
        raise StudyError(f"{where}: {key} is missing")
    value = table[key]
    items = value if isinstance(value, list) else [value]
    for item in items:
        if not isinstance(item, kind) or (kind is int and isinstance(item, bool)) or \
                (minimum is not None and item < minimum):
            want = {int: f"integers >= {minimum}", bool: "true or false", str: "text"}[kind]
            raise StudyError(f"{where}: {key} takes {want}, not {item!r}")
    return items


def load(path: str) -> tuple[dict, dict]:
    """The ``[sweep]`` and ``[frontier]`` tables of a study file, every key the study reads typed.

    Raises:
        StudyError: A missing file or table, a missing key or a value of the wrong type.
    """
    try:
        with open(path, "rb") as f:
            conf = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise StudyError(f"cannot read {path!r}: {exc}") from None
    for table in ("sweep", "frontier"):
        if not isinstance(conf.get(table), dict):
            raise StudyError(f"{path!r}: a [{table}] table is needed")
    sweep, study = dict(conf["sweep"]), dict(conf["frontier"])
    sweep["batch_sizes"] = _list(sweep, "batch_sizes", int, f"{path!r} [sweep]", minimum=1)
    sweep["out"] = _list(sweep, "out", str, f"{path!r} [sweep]")[0]
    where = f"{path!r} [frontier]"
    study["images"] = _list(study, "images", int, where, minimum=1)[0]
    study["plots"] = _list(study, "plots", str, where)[0]
    study["amp"] = _list(study, "amp", str, where)
    study["checkpointing"] = _list(study, "checkpointing", bool, where)
    study["micro_batch"] = _list(study, "micro_batch", int, where, minimum=0)
    study["micro_batch_batch_sizes"] = _list(study, "micro_batch_batch_sizes", int, where, minimum=1)
    variants = study.get("variant")
    if not isinstance(variants, list) or not all(isinstance(v, dict) for v in variants):
        raise StudyError(f"{where}: [[frontier.variant]] tables are needed")
    for i, v in enumerate(variants):
        at = f"{where} variant {i + 1}"
        v["selector"] = _list(v, "selector", str, at)[0]
        v["knobs"] = _list(v, "knobs", str, at)
        unknown = [k for k in v["knobs"] if k not in UNSET]
        if unknown:
            raise StudyError(f"{at}: unknown knob {unknown[0]!r} (knobs: {', '.join(UNSET)})")
        if not isinstance(v.get("options", {}), dict):
            raise StudyError(f"{at}: options takes a table {{ key = value }}, not {v['options']!r}")
    return sweep, study


def commands(path: str) -> list[list[str]]:
    """The ``fps-profile`` argument lists of the study in ``path``: every sweep, then the frontier."""
    sweep, study = load(path)
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
    try:
        todo = commands(argv[0])
    except StudyError as exc:
        print(f"frontier_study: error: {exc}", file=sys.stderr)
        return 2
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
