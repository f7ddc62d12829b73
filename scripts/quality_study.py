"""The embedded quality study: what each selector's mask is worth after fine-tuning.

    python scripts/quality_study.py                  # everything: ~10 minutes on 2 CPU cores
    python scripts/quality_study.py --figures-only   # redraw the figures from the committed rows

1. **Pre-training** (cached): ``resnet10t`` at 32 px with a 10-way classifier, trained on the
   digits 0-4 of scikit-learn's digits (:data:`PRETRAIN_STEPS` AdamW steps), saved as a
   safetensors state dict in ``--cache`` (made once; its sha256 goes into every row).
2. **The task**: the *other* half, digits 5-9, corrupted with additive Gaussian pixel noise
   (:data:`NOISE` of the [0, 1] range, fixed per image), :data:`PER_CLASS` training examples per
   class and every other image held out, written as a ``.npz`` with its own split (``--data``
   reads it): a few-shot shift that fixed features handle badly (head only and full fine-tuning
   are over 20 points apart). GD-FPS gets an anchor: FPS's statistic of the pre-trained model
   on its pre-training data (:func:`make_anchor`).
3. **The sweep**: ``fps-profile sweep --phase finetune`` with the checkpoint as ``--weights``
   (its classifier, 10-way, does not fit the 5 classes and keeps a random initialisation;
   the rows say so), each selector at each budget, full fine-tuning, head only and the
   frozen model, every seed; ``--jobs`` sweeps in parallel, one thread each, into parts
   that are merged into ``--out`` (resumable: cells already in a part are skipped).
4. **Figures** into ``--figures``: accuracy vs the selection's peak memory and vs the
   trainable fraction (:mod:`fps_profile.plots.quality`), and the table as markdown.

Everything is seeded: the same command on the same machine gives the same accuracies.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MODEL, IMAGE_SIZE, PRETRAIN_CLASSES, TASK_CLASSES = "resnet10t", 32, "0-4", (5, 6, 7, 8, 9)
PRETRAIN_STEPS, PRETRAIN_BATCH, PRETRAIN_LR = 150, 64, 2e-3
PER_CLASS, NOISE = 30, 0.3
SELECTORS = "fps,gps,magnitude,random,wanda,snip,gd-fps"
ANCHOR_BATCHES, ANCHOR_BATCH = 4, 64
ROOT = Path(__file__).resolve().parent.parent


def pretrain(cache: Path) -> Path:
    """The pre-trained checkpoint (made once, then read from ``cache``)."""
    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file

    from fps_profile.data import load_data
    from fps_profile.measure.finetune import cosine
    from fps_profile.models.build import build_model
    from fps_profile.models.seeding import seed_everything

    path = cache / f"{MODEL}-{IMAGE_SIZE}px-digits{PRETRAIN_CLASSES}-{PRETRAIN_STEPS}steps.safetensors"
    if path.is_file():
        return path
    start = time.perf_counter()
    seed_everything(0)
    model, _ = build_model(MODEL, image_size=IMAGE_SIZE, num_classes=10)
    data = load_data(f"digits:{PRETRAIN_CLASSES}", seed=0)
    x, y = data.tensors(data.train, model, IMAGE_SIZE)
    vx, vy = data.tensors(data.val, model, IMAGE_SIZE)
    opt = torch.optim.AdamW(model.parameters(), PRETRAIN_LR, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: cosine(i, PRETRAIN_STEPS))
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(PRETRAIN_STEPS):
        idx = torch.randint(len(y), (PRETRAIN_BATCH,), generator=gen)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(vx).argmax(1) == vy).float().mean())
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    os.replace(tmp, path)
    print(f"pre-trained {MODEL} on digits {PRETRAIN_CLASSES} in {time.perf_counter() - start:.0f} s: "
          f"held-out accuracy {100 * acc:.1f}% -> {path}", file=sys.stderr)
    return path


def make_anchor(cache: Path, weights: Path) -> Path:
    """GD-FPS's anchor: FPS's activation statistic of the pre-trained model on its pre-training data."""
    from fps_profile.data import data_batches, load_data
    from fps_profile.models.build import build_model
    from fps_profile.selection.selectors.gdfps import save_anchor

    path = weights.with_name(weights.stem + "-gdfps-anchor.safetensors")
    if path.is_file():
        return path
    model, _ = build_model(MODEL, image_size=IMAGE_SIZE, num_classes=10, weights=str(weights))
    data = load_data(f"digits:{PRETRAIN_CLASSES}", seed=0)
    batches = data_batches(data, model.eval(), ANCHOR_BATCH, ANCHOR_BATCHES, seed=0, image_size=IMAGE_SIZE)
    return save_anchor(model, batches, path)


def make_task(cache: Path) -> Path:
    """Digits 5-9 with fixed Gaussian pixel noise, PER_CLASS training images per class (seeded), as a .npz."""
    from sklearn.datasets import load_digits

    path = cache / f"digits5-9-noise{NOISE}-{PER_CLASS}shot.npz"
    if path.is_file():
        return path
    digits = load_digits()
    rng = np.random.default_rng(0)
    images = digits.images.astype(np.float32) / 16.0
    images = images + rng.normal(0.0, NOISE, images.shape).astype(np.float32)  # not clipped: noise as it is
    train, val = [], []
    for label in TASK_CLASSES:
        idx = rng.permutation(np.flatnonzero(digits.target == label))
        train.append(idx[:PER_CLASS])
        val.append(idx[PER_CLASS:])
    train, val = np.concatenate(train), np.concatenate(val)
    relabel = {c: i for i, c in enumerate(TASK_CLASSES)}
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".partial.npz")
    np.savez(tmp, train_x=images[train], train_y=np.array([relabel[c] for c in digits.target[train]]),
             val_x=images[val], val_y=np.array([relabel[c] for c in digits.target[val]]),
             classes=np.array([str(c) for c in TASK_CLASSES]))
    os.replace(tmp, path)
    return path


def sweep_commands(args, weights: Path, data: Path, anchor: Path, parts: Path) -> list[list[str]]:
    """One ``fps-profile sweep`` per seed (each job: its own results part)."""
    out = []
    options = ["-o", f"gd-fps:anchor={anchor}"] if "gd-fps" in args.selectors.split(",") else []
    for seed in args.seeds.split(","):
        out.append([sys.executable, "-m", "fps_profile", "sweep", "--phase", "finetune", "--model", MODEL,
                    "--image-size", str(IMAGE_SIZE), "--batch-size", str(args.batch_size), "--data", str(data),
                    "--weights", str(weights), "--selector", args.selectors, "--k", args.k, "--seed", seed,
                    "--steps", str(args.steps), "--lr", str(args.lr), "--out", str(parts / f"seed{seed}.jsonl"),
                    "--no-progress", *options])
    return out


def run_jobs(commands: list[list[str]], jobs: int) -> None:
    """Run the sweeps, ``jobs`` at a time, one thread each; fail if one fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    pending, running = list(commands), []
    while pending or running:
        while pending and len(running) < jobs:
            running.append(subprocess.Popen(pending.pop(0), env=env, cwd=ROOT, stdout=subprocess.DEVNULL))
        time.sleep(0.5)
        for p in [p for p in running if p.poll() is not None]:
            running.remove(p)
            if p.returncode:
                raise SystemExit(f"a sweep failed ({p.returncode}): {' '.join(p.args)}")


def merge(parts: Path, out: Path) -> list:
    """Every part's rows (the newest of each cell), sorted by cell, written to ``out``."""
    from fps_profile.analysis.series import dedupe
    from fps_profile.rows.store import read_results

    rows = dedupe([r for p in sorted(parts.glob("*.jsonl")) for r in read_results(p)])
    rows.sort(key=lambda r: repr(r.key()))
    out.write_text("".join(r.to_json() + "\n" for r in rows))
    return rows


def figures(rows, folder: Path, command: str) -> list[Path]:
    import matplotlib

    from fps_profile.analysis.quality import format_quality
    from fps_profile.plots import save
    from fps_profile.plots.quality import accuracy_vs_fraction, accuracy_vs_memory
    from fps_profile.plots.style import RC

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    with matplotlib.rc_context(RC):
        for name, draw in (("accuracy_vs_memory", accuracy_vs_memory), ("accuracy_vs_fraction", accuracy_vs_fraction)):
            fig = draw(rows)
            if fig is not None:
                paths += save(fig, folder, (name,), ("png", "svg"))
    table = format_quality(rows)
    (folder / "README.md").write_text(
        "# What a selection is worth (the embedded quality study)\n\n"
        f"Made by `{command}` from `results/quality-digits.jsonl`; redraw with "
        "`python scripts/quality_study.py --figures-only`.\n\n"
        "![accuracy vs the selection's peak memory](accuracy_vs_memory.png)\n\n"
        "![accuracy vs the trainable fraction](accuracy_vs_fraction.png)\n\n" + table + "\n")
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "results" / "quality-digits.jsonl"), help="merged results file")
    p.add_argument("--figures", default=str(ROOT / "plots" / "quality"), help="folder of the figures and table")
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "fps-profile" / "quality"),
                   help="checkpoint, task data and the sweeps' results parts")
    p.add_argument("--selectors", default=SELECTORS)
    p.add_argument("--k", default="1,2,4,8", help="per-row budgets")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--batch-size", type=int, default=25)
    p.add_argument("--jobs", type=int, default=2, help="sweeps run at once (one thread each)")
    p.add_argument("--figures-only", action="store_true", help="redraw from --out, measure nothing")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    out, folder = Path(args.out), Path(args.figures)
    command = "python scripts/quality_study.py" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    if args.figures_only:
        from fps_profile.rows.store import read_results

        rows = read_results(out)
    else:
        start = time.perf_counter()
        cache = Path(args.cache).expanduser()
        weights, data = pretrain(cache), make_task(cache)
        anchor = make_anchor(cache, weights)
        # One folder of parts per setting (the seeds are its files), so another setting never mixes in.
        setting = f"b{args.batch_size}-steps{args.steps}-lr{args.lr:g}-k{args.k}-{args.selectors}".replace(",", "_")
        parts = cache / "parts" / setting
        parts.mkdir(parents=True, exist_ok=True)
        run_jobs(sweep_commands(args, weights, data, anchor, parts), args.jobs)
        rows = merge(parts, out)
        print(f"{len(rows)} rows in {out} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    for path in figures(rows, folder, command):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
