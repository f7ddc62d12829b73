"""Peak live-tensor bytes of one train step: fps-profile's in-place sparse step vs PEFT SHiRA.

Usage: python scripts/peft_step_memory.py [--width 32] [--depth 2] [--batch 6] [--r 2]

Both steps train the same mask (magnitude scores, budget ``shira:R``, scope ``shira``:
the ranked Linear entries and the classifier) on the same seeded ViT and batch, with
AdamW, weight decay and clipping. Each is run once to create its optimizer state, then
measured once under :class:`~fps_profile.trackers.LiveTensorBytes` (exact CPU storage
bytes) with :class:`~fps_profile.trackers.breakdown.PeakBreakdown` (what the peak holds).
A second tracker also counts the storages inside sparse COO tensors, which
``LiveTensorBytes`` skips (it counts strided tensors): PEFT's SHiRA builds one per layer.
Investigation only: not wired into the harness.
"""

from __future__ import annotations

import argparse

import torch
from timm.models.vision_transformer import VisionTransformer

from fps_profile import select

from fps_profile.measure import phases
from fps_profile.selection.shira import SHIRA_SCOPE
from fps_profile.integrations.peft_step import peft_train_step_fn
from fps_profile.trackers import LiveTensorBytes
from fps_profile.trackers.breakdown import PeakBreakdown


class SparseAwareBytes(LiveTensorBytes):
    """:class:`LiveTensorBytes` that also counts the indices and values of sparse COO outputs."""

    def track(self, t, check_budget=True):
        if t.layout is torch.sparse_coo:
            for part in (t._indices(), t._values()):
                super().track(part, check_budget)
        else:
            super().track(t, check_budget)


def build(width: int, depth: int, seed: int = 0) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=width, depth=depth, num_heads=2,
                             num_classes=10).eval()


def measure(step, model, batch) -> dict:
    step()  # optimizer state exists from here on, as after the harness's warm-up
    with LiveTensorBytes("cpu") as live, PeakBreakdown(live, model, inputs=[batch], optimizer=step.optimizer) as bd:
        step()
    step()
    with SparseAwareBytes("cpu") as sparse_aware:
        step()
    return {"peak": live.peak, "baseline": live.baseline, "phase": bd.peak_phase,
            "categories": bd.peak.breakdown(), "holders": dict(bd.peak.holders),
            "sparse_aware_peak": sparse_aware.peak}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--batch", type=int, default=6)
    ap.add_argument("--r", type=int, default=2)
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    batch = (torch.randn(args.batch, 3, 32, 32, generator=gen), torch.randint(0, 10, (args.batch,), generator=gen))
    def selection():
        return select(build(args.width, args.depth), None, "magnitude", budget=f"shira:{args.r}", scope=SHIRA_SCOPE)

    mask = selection()
    adapted = sum(p.numel() for n, p in build(args.width, args.depth).named_parameters()
                  if n.endswith(".weight") and mask.entry(n).index is not None)
    print(f"ViT width {args.width}, depth {args.depth}, batch {args.batch}; mask {mask.stats().trainable:,} "
          f"trainable; adapted Linear weights {adapted:,} entries = {4 * adapted:,} bytes (float32)")
    del mask  # as in the harness, only what a step keeps of its mask stays alive
    rows = {}
    for label, make in (("fps-profile sparse", phases.train_step_fn), ("peft shira", peft_train_step_fn)):
        model = build(args.width, args.depth)
        step = make(model, *batch, selection())
        rows[label] = measure(step, step.model, batch)
    for label, r in rows.items():
        cats = ", ".join(f"{k} {v:,}" for k, v in r["categories"].items() if v)
        print(f"{label:20s} peak {r['peak']:>10,} B (baseline {r['baseline']:,}; at the peak, phase "
              f"{r['phase']}: {cats}); counting sparse parts too: {r['sparse_aware_peak']:,} B")
    a, b = rows["fps-profile sparse"], rows["peft shira"]
    print(f"peft - fps: {b['peak'] - a['peak']:+,} B; by category: " + ", ".join(
        f"{k} {b['categories'].get(k, 0) - a['categories'].get(k, 0):+,}"
        for k in sorted(set(a["categories"]) | set(b["categories"]))))
    diff = {k: b["holders"].get(k, 0) - a["holders"].get(k, 0) for k in set(a["holders"]) | set(b["holders"])}
    top = sorted((kv for kv in diff.items() if kv[1]), key=lambda kv: -abs(kv[1]))[:12]
    print("largest differences by (holder, category): " + "; ".join(f"{h} {c} {v:+,}" for (h, c), v in top))


if __name__ == "__main__":
    main()
