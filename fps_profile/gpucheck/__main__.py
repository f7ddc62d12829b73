"""``python -m fps_profile.gpucheck``: the steps of ``scripts/gpu_check.sh``.

    prepare DEVICE OUT    requirements (one line each unmet; exit 2 if one the measurement needs),
                          OUT/env.json, OUT/probes.json; prints the sim target for DEVICE
    measure DEVICE OUT_FILE --grid "float32:m1,m2 bfloat16:m1" --batch-size 1,16,64 --seconds N [--part K/N]
    report OUT --tests-rc N   OUT/report.md and OUT/figure.png; exit 0 (pass) or 1, printing why
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _prepare(args) -> int:
    from fps_profile.gpucheck import plan, probes

    problems = plan.check_requirements(plan.requirements())
    for line in problems:
        print(f"gpu-check: {line}", file=sys.stderr)
    if any(p.startswith("missing:") and "pytest" not in p for p in problems):
        return 2
    out = Path(args.out)
    (out / "env.json").write_text(json.dumps(plan.environment(args.device, problems), indent=1) + "\n")
    found = probes.run(args.device)
    (out / "probes.json").write_text("[\n" + ",\n".join(json.dumps(p) for p in found) + "\n]\n")
    print(plan.sim_target(args.device))
    return 0


def _measure(args) -> int:
    from fps_profile.cli.args import int_list
    from fps_profile.gpucheck import plan

    k, _, n = args.part.partition("/")
    plan.measure(args.device, plan.parse_grid(args.grid), int_list(args.batch_size), Path(args.out), args.seconds,
                 args.repeats, (int(k), int(n)))
    return 0


def _report(args) -> int:
    from fps_profile.gpucheck import report

    out = Path(args.out)
    text, verdict = report.build(out, args.tests_rc)
    (out / "report.md").write_text(text)
    report.figure(out)
    for line in verdict.problems:
        print(f"gpu-check: FAIL: {line}", file=sys.stderr)
    print(f"gpu-check: {'PASS' if verdict.ok else 'FAIL'}; report: {out / 'report.md'}", file=sys.stderr)
    return 0 if verdict.ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fps_profile.gpucheck", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="step", required=True)
    s = sub.add_parser("prepare")
    s.add_argument("device")
    s.add_argument("out")
    s.set_defaults(run=_prepare)
    s = sub.add_parser("measure")
    s.add_argument("device")
    s.add_argument("out")
    s.add_argument("--grid", required=True)
    s.add_argument("--batch-size", required=True)
    s.add_argument("--seconds", type=float, default=300.0)
    s.add_argument("--repeats", type=int, default=3)
    s.add_argument("--part", default="0/1", help="K/N: measure every N-th cell from the K-th (N processes share)")
    s.set_defaults(run=_measure)
    s = sub.add_parser("report")
    s.add_argument("out")
    s.add_argument("--tests-rc", type=int, required=True)
    s.set_defaults(run=_report)
    args = p.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
