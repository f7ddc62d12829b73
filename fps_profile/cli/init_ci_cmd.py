"""``fps-profile init-ci``: a memory gate for a repository's own selector, as a GitHub Actions workflow.

It writes the workflow, a small grid of the selector's cells on the simulated GPU, a gate script,
a refresh script and the baseline (measured now), all listed in :mod:`fps_profile.cli.ci_files`.
On every pull request the workflow sweeps the grid and runs ``fps-profile gate`` against the
committed baseline: the sim's figures are deterministic, so any change that makes the selector
need more memory or FLOPs fails the job, and the gate's table lands in the job summary.
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path

from fps_profile.cli.args import comma_list, int_list
from fps_profile.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "init-ci",
        help="write a GitHub Actions memory gate for your selector (sim grid, baseline, scripts)",
        description="Write, into the repository at --dir: .github/workflows/fps-profile-gate.yml (on every pull "
        "request: install, sweep the grid on the simulated GPU, gate it against the committed baseline, the "
        "gate's markdown in the job summary), .fps-profile/grid.toml (the cells), .fps-profile/gate.sh, "
        ".fps-profile/refresh-baseline.sh and .fps-profile/baseline.jsonl, measured now. The selectors must "
        "be known here (built in, or installed with an entry point in the group fps_profile.selectors). "
        "Nothing is written when something fails.",
        epilog="Example: fps-profile init-ci --selector my-selector --model test_vit,vit_tiny_patch16_224 "
        "--install 'python -m pip install -e .'",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--selector", required=True, metavar="LIST", help="the selectors to gate (comma list)")
    p.add_argument("--model", default="test_vit", metavar="LIST", help="timm or hf: models (comma list)")
    p.add_argument("--batch-size", default="1,8", metavar="LIST", help="batch sizes (comma list)")
    p.add_argument("--phase", default="select", metavar="LIST", help="phases (comma list, e.g. select,train_step)")
    p.add_argument("--device", default="sim", metavar="LIST", help="simulated GPUs (sim, sim:h100, sim:a100, ...)")
    p.add_argument("--budget", default="k=1", metavar="LIST", help="budgets (k=1, fraction=0.01, shira:8)")
    p.add_argument("--scope", default="gps", help="parameter scope")
    p.add_argument("--dir", default=".", help="the repository's root")
    p.add_argument("--python", default=f"{sys.version_info.major}.{sys.version_info.minor}",
                   help="Python version the workflow sets up")
    p.add_argument("--install", action="append", default=None, metavar="COMMAND",
                   help="the workflow's install command after torch and timm (repeatable; default: python -m pip "
                   "install -e . , so your package must depend on fps-profile: a git URL or a wheel, as it is "
                   "not on PyPI)")
    p.add_argument("--force", action="store_true", help="overwrite the files a previous init-ci wrote")
    p.set_defaults(run=run)


def _settings(args: argparse.Namespace) -> dict:
    return {"selectors": comma_list(args.selector), "models": comma_list(args.model),
            "batch_sizes": int_list(args.batch_size), "dtypes": ["float32"], "devices": comma_list(args.device),
            "phases": comma_list(args.phase), "budget": comma_list(args.budget), "scope": args.scope,
            "warmup": 0, "repeats": 1}


def _grid(path: Path):
    """The grid CI will sweep: read from the written TOML, as ``fps-profile sweep --config`` reads it."""
    from fps_profile.cli import build_parser
    from fps_profile.cli.sweep_cmd import build_grid
    from fps_profile.measure.backends import predicts

    grid = build_grid(build_parser().parse_args(["sweep", "--config", str(path)]))
    grid.validate()
    for device in grid.devices:
        if not predicts(device):
            raise UserError(f"the gate needs figures that repeat exactly: use a simulated GPU (sim, sim:h100), "
                            f"not {device!r}")
    if not grid.selectors:
        raise UserError("no selector given")
    return grid


def _measure(grid, out: Path) -> int:
    from fps_profile.rows.label import describe
    from fps_profile.run.sweep import run_sweep

    report = run_sweep(grid, out, progress=False)
    bad = [r for r in report.rows if r.status != "ok"]
    if bad:
        raise UserError(f"cell {describe(bad[0])} failed ({bad[0].status}: {bad[0].error}); no baseline written")
    return len(report.rows)


def run(args: argparse.Namespace) -> int:
    import timm
    import torch
    import torchvision

    from fps_profile import __version__
    from fps_profile.cli import ci_files

    root = Path(args.dir)
    if not root.is_dir():
        raise UserError(f"--dir {args.dir!r} is not a directory")
    targets = [ci_files.WORKFLOW, ci_files.GRID, ci_files.GATE, ci_files.REFRESH, ci_files.BASELINE]
    existing = [t for t in targets if (root / t).exists()]
    if existing and not args.force:
        raise UserError(f"{str(root / existing[0])!r} exists (written by an earlier init-ci?); --force overwrites it")
    versions = {m.__name__: m.__version__.split("+")[0] for m in (torch, torchvision, timm)}
    texts = ci_files.files(_settings(args), version=__version__, python=args.python, versions=versions,
                           install=args.install or ["python -m pip install -e ."])
    tmp = Path(tempfile.mkdtemp(prefix=".fps-profile-init.", dir=root))
    try:
        for rel, text in texts.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(text)
        rows = _measure(_grid(tmp / ci_files.GRID), tmp / ci_files.BASELINE)
        for rel in targets:  # all measured: now into place
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / rel, root / rel)
        for rel in (ci_files.GATE, ci_files.REFRESH):
            mode = (root / rel).stat().st_mode
            (root / rel).chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for rel in targets:
        print(f"wrote {root / rel}")
    print(f"baseline: {rows} cells on {', '.join(_settings(args)['devices'])} (torch {versions['torch']}, timm "
          f"{versions['timm']}). Commit them; every pull request is then gated (bash {ci_files.GATE} runs the "
          f"same check here).")
    return 0
