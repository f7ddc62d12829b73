"""The GPU check's report: verdict, headline, FPS and GPS on the card, sim vs measured, NVML, reductions.

Built from the files the check wrote (``measured.jsonl``, ``sim.jsonl``, ``probes.json``,
``env.json``, ``pytest.log``); reuses :func:`fps_profile.analysis.compare.compare` for the
per-cell table and :func:`fps_profile.plots.memory_vs_batch` for the figure.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fps_profile.gpucheck.plan import GPS_CE
from fps_profile.rows.label import who
from fps_profile.rows.result import Result
from fps_profile.rows.schema import selector_variant
from fps_profile.rows.store import read_results
from fps_profile.errors import UserError
from fps_profile.analysis.compare import compare, match_key, predicted_peak
from fps_profile.units import markdown_table
from fps_profile.units import fmt_bytes, fmt_ratio, fmt_seconds

MEDIAN_GOAL, WORST_GOAL = 3.0, 8.0
HEADLINE = ("vit_base_patch16_224", 64, "float32")
PAPER = '"nearly 9x" lower peak memory and "about 2x" faster selection than GPS (FPS paper, ViT-B/16)'
GPS_CE_NAME = selector_variant("gps", GPS_CE)
WHO = {"floor": "inference floor", "fps": "FPS", "gps": "GPS (2 views, SupCon)", GPS_CE_NAME: "GPS (CE, 1 view)",
       "train:full": "full fine-tuning step", "train:fps": "sparse step (FPS mask)"}


@dataclass
class Verdict:
    """Why the check passed or failed: one line per problem."""

    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _cells(rows: Sequence[Result]) -> dict[tuple, dict[str, Result]]:
    """Rows of status ok by (model, dtype, batch), then by who."""
    out: dict[tuple, dict[str, Result]] = {}
    for r in rows:
        if r.status == "ok":
            out.setdefault((r.model, r.dtype, r.batch_size), {})[who(r)] = r
    return out


def _ratio(a: Result | None, b: Result | None, attr: str) -> str:
    x, y = (getattr(a, attr) if a else None), (getattr(b, attr) if b else None)
    return fmt_ratio(x / y) if x and y else "-"


def headline(rows: Sequence[Result]) -> list[str]:
    """ViT-B/16 batch 64 float32 (or the largest cell there is), next to the paper's claims."""
    cells = _cells(rows)
    key = HEADLINE if HEADLINE in cells else max(cells, key=lambda k: (k[2], k[0]), default=None)
    if key is None:
        return ["No cell was measured."]
    c = cells[key]
    fps = c.get("fps")
    body = [[WHO.get(w, w), fmt_bytes(c[w].peak_allocated_bytes), _ratio(c[w], fps, "peak_allocated_bytes"),
             fmt_seconds(c[w].wall_time_s), _ratio(c[w], fps, "wall_time_s")]
            for w in ("floor", "fps", "gps", GPS_CE_NAME) if w in c]
    note = "" if key == HEADLINE else " (ViT-B/16 batch 64 float32 was not measured; the largest cell instead)"
    return [f"{key[0]}, batch {key[2]}, {key[1]}{note}. The paper: {PAPER}.", "",
            markdown_table(["", "peak", "peak / FPS", "time", "time / FPS"], body)]


def fps_gps_table(rows: Sequence[Result]) -> str:
    """Per model, dtype and batch: FPS over the floor, GPS over FPS (memory and time), the train steps."""
    body = []
    for (model, dtype, batch), c in sorted(_cells(rows).items()):
        fps, floor = c.get("fps"), c.get("floor")
        body.append([model, dtype, str(batch), _ratio(fps, floor, "peak_allocated_bytes"),
                     _ratio(c.get("gps"), fps, "peak_allocated_bytes"), _ratio(c.get("gps"), fps, "wall_time_s"),
                     _ratio(c.get(GPS_CE_NAME), fps, "peak_allocated_bytes"),
                     _ratio(c.get(GPS_CE_NAME), fps, "wall_time_s"),
                     _ratio(c.get("train:fps"), c.get("train:full"), "peak_allocated_bytes")])
    head = ["model", "dtype", "batch", "FPS / floor", "GPS / FPS", "GPS / FPS time", "GPS-CE / FPS",
            "GPS-CE / FPS time", "sparse / full step"]
    return markdown_table(head, body)


def nvml_table(rows: Sequence[Result]) -> str | None:
    """Allocator against driver: allocated, reserved, NVML's device-wide peak and what it adds."""
    body = [[r.model, r.dtype, str(r.batch_size), WHO.get(who(r), who(r)), fmt_bytes(r.peak_allocated_bytes),
             fmt_bytes(r.peak_reserved_bytes), fmt_bytes(r.nvml_peak_used_bytes),
             fmt_bytes(r.nvml_peak_used_bytes - r.peak_reserved_bytes)]
            for r in rows if r.status == "ok" and r.nvml_peak_used_bytes and r.peak_reserved_bytes]
    if not body:
        return None
    return markdown_table(["model", "dtype", "batch", "what", "allocated", "reserved", "NVML used",
                           "NVML - reserved"], body)


def probe_table(probes: Sequence[dict]) -> str:
    body = [["x".join(map(str, p["shape"])), p["dtype"], p["op"], fmt_bytes(p["input_bytes"]),
             fmt_bytes(p["scratch_bytes"]), "-" if p["predicted_bytes"] is None else fmt_bytes(p["predicted_bytes"]),
             "yes" if p["predicted_bytes"] is None or p["predicted_bytes"] == p["scratch_bytes"] else "**no**"]
            for p in probes]
    return markdown_table(["input", "dtype", "reduction", "input bytes", "scratch measured", "scratch predicted",
                           "match"], body)


def evaluate(measured, sim, tests_rc: int, errors: Sequence[float], table_cells: Sequence[str]) -> Verdict:
    """The check passes when the tests pass, every cell was measured and sim is within its goal."""
    v = Verdict()
    if tests_rc != 0:
        v.problems.append(f"the CUDA tests failed (pytest exit status {tests_rc}; see pytest.log)")
    for r in list(measured) + list(sim):
        if r.status not in ("ok", "oom"):
            v.problems.append(f"{r.device} {r.model} b={r.batch_size} {r.dtype} {who(r)}: {r.status}: {r.error}")
    missing = {match_key(r) for r in sim} - {match_key(r) for r in measured}
    if missing:
        v.problems.append(f"{len(missing)} cells of the grid were not measured (time budget or failure)")
    if errors:
        absolute = sorted(abs(e) for e in errors)
        med, worst = statistics.median(absolute), absolute[-1]
        if med > MEDIAN_GOAL or worst > WORST_GOAL:
            v.problems.append(f"sim is off: median |error| {med:.1f}% (goal {MEDIAN_GOAL:g}%), worst {worst:.1f}% "
                              f"(goal {WORST_GOAL:g}%); cells beyond {WORST_GOAL:g}%: " + "; ".join(table_cells))
    else:
        v.problems.append("no cell is in both the measured and the sim rows")
    return v


def build(out: Path, tests_rc: int) -> tuple[str, Verdict]:
    """The report's markdown and the verdict, from the files in ``out``."""
    measured = read_results(out / "measured.jsonl", missing_ok=True)
    sim = read_results(out / "sim.jsonl", missing_ok=True)
    env = json.loads((out / "env.json").read_text()) if (out / "env.json").exists() else {}
    probes = json.loads((out / "probes.json").read_text()) if (out / "probes.json").exists() else []
    try:
        table, errors = compare(measured, sim)
    except UserError:  # no common cell: the verdict says so
        table, errors = "(no cell in both files)", []
    sim_by_key = {match_key(r): r for r in sim}
    beyond = []
    for m in measured:
        p = sim_by_key.get(match_key(m))
        if m.status == "ok" and p is not None and predicted_peak(p) and m.peak_allocated_bytes:
            err = 100 * (p.peak_allocated_bytes / m.peak_allocated_bytes - 1)
            if abs(err) > WORST_GOAL:
                beyond.append(f"{m.model} b={m.batch_size} {m.dtype} {who(m)} {err:+.1f}%")
    verdict = evaluate(measured, sim, tests_rc, errors, beyond)
    device = measured[0].env.get("device_name") if measured else env.get("device_name", "?")
    summary = (out / "pytest.log").read_text().strip().splitlines()[-1:] if (out / "pytest.log").exists() else []
    absolute = sorted(abs(e) for e in errors)
    dry = " (dry run on the CPU)" if measured and measured[0].device == "cpu" else ""
    lines = [f"# GPU check: {device}{dry}", "",
             f"**{'PASS' if verdict.ok else 'FAIL'}**. Commit {env.get('git_commit') or '? (not a git checkout)'}, "
             f"torch "
             f"{env.get('torch', '?')}, CUDA {env.get('cuda', '-')}, driver {env.get('driver', '-')}; "
             f"{len(measured)} measured rows ({measured[0].device if measured else '-'}), {len(sim)} sim rows "
             f"({sim[0].device if sim else '-'}).", ""]
    lines += [f"- {p}" for p in verdict.problems] or ["- every test passed, every cell was measured, sim within "
                                                       f"{MEDIAN_GOAL:g}% median / {WORST_GOAL:g}% worst"]
    lines += ["", f"Tests (`pytest -m cuda`): {summary[0] if summary else 'no log'}."]
    lines += ["", "## Headline", "", *headline(measured)]
    lines += ["", "## FPS and GPS on this device", "", fps_gps_table(measured)]
    if absolute:
        lines += ["", f"## Sim vs measured ({len(errors)} cells: median |error| "
                      f"{statistics.median(absolute):.1f}%, worst {absolute[-1]:.1f}%)"]
    lines += ["", "Predicted `max_memory_allocated` against measured, per cell:", "", table]
    nvml = nvml_table(measured)
    lines += ["", "## NVML vs allocator", "", nvml or "No NVML figures (not a CUDA device, or no NVML)."]
    if probes:
        lines += ["", "## Reduction scratch", "", "Bytes a reduction over the first two dimensions allocates beyond "
                  "its output, against `fps_profile.sim.reductions` (docs/sim.md, \"Reductions on CUDA\"):", "",
                  probe_table(probes)]
    lines += ["", "![peak memory vs batch size, measured](figure.png)", ""]
    return "\n".join(lines), verdict


def figure(out: Path) -> Path | None:
    """Peak memory vs batch size of the measured float32 rows (else the first dtype), as ``figure.png``."""
    import matplotlib

    from fps_profile.plots import memory_vs_batch
    from fps_profile.plots.style import RC

    rows = [r for r in read_results(out / "measured.jsonl", missing_ok=True) if r.status in ("ok", "oom")]
    dtypes = sorted({r.dtype for r in rows}, key=lambda d: d != "float32")
    if not dtypes:
        return None
    with matplotlib.rc_context(RC):
        fig = memory_vs_batch([r for r in rows if r.dtype == dtypes[0]])
        if fig is None:
            return None
        fig.savefig(out / "figure.png", format="png", metadata=None)
    return out / "figure.png"
