"""The files ``fps-profile init-ci`` writes into a user's repository: their text, filled in.

* ``.github/workflows/fps-profile-gate.yml``: on every pull request, install, then run the gate script;
* ``.fps-profile/grid.toml``: the cells the gate measures (``fps-profile sweep --config``);
* ``.fps-profile/gate.sh``: sweep the grid on the simulated GPU, then ``fps-profile gate`` against the
  committed baseline, the markdown report also appended to ``$GITHUB_STEP_SUMMARY``;
* ``.fps-profile/refresh-baseline.sh``: measure the grid again into ``.fps-profile/baseline.jsonl``;
* ``.fps-profile/baseline.jsonl``: the baseline (measured by ``init-ci`` itself).
"""

from __future__ import annotations

import json

WORKFLOW = ".github/workflows/fps-profile-gate.yml"
DIR = ".fps-profile"
GRID, GATE, REFRESH, BASELINE = (f"{DIR}/{n}" for n in ("grid.toml", "gate.sh", "refresh-baseline.sh",
                                                         "baseline.jsonl"))
#: The name of the workflow step that runs the gate (tests run that step's command).
GATE_STEP = "Memory gate"

_WORKFLOW = """\
# Written by `fps-profile init-ci` (fps-profile {version}). On every pull request: measure the cells of
# {grid} on a simulated GPU (`--device sim`: peak bytes and FLOPs predicted without a GPU, the same to
# the byte on every machine with the same torch and timm) and compare them with the committed
# {baseline}. The job fails when a figure got worse; the gate's table goes to the job summary.
# After an intended change: bash {refresh}, and commit the new baseline with the change.
name: fps-profile memory gate
on:
  pull_request:
  workflow_dispatch:
permissions:
  contents: read
jobs:
  memory-gate:
    runs-on: ubuntu-latest
    timeout-minutes: 30
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-python@v5
        with:
          python-version: "{python}"
      - name: Install
        run: |
{install}
      - name: {gate_step}
        run: bash {gate}
"""

_INSTALL = [
    "python -m pip install --upgrade pip",
    "# the versions the baseline was measured with: the sim's figures are exact for them",
    'python -m pip install "torch=={torch}" "torchvision=={torchvision}" '
    '--index-url https://download.pytorch.org/whl/cpu',
    'python -m pip install "timm=={timm}"',
]

_GATE = """\
#!/usr/bin/env bash
# Written by `fps-profile init-ci`: sweep {grid} on the simulated GPU and compare it with the
# committed {baseline} (`fps-profile gate --strict`). Exit 1 when a figure got worse (predicted bytes and
# FLOPs are compared exactly) or a cell is missing, 2 on a bad file, 0 otherwise. The markdown report is
# printed and, in GitHub Actions, appended to the job summary. Extra arguments go to `fps-profile gate`.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
fps-profile sweep --config {grid} --out "$tmp/current.jsonl" --no-progress >/dev/null
fps-profile gate {baseline} "$tmp/current.jsonl" --strict ${{GITHUB_STEP_SUMMARY:+--out "$GITHUB_STEP_SUMMARY"}} "$@"
"""

_REFRESH = """\
#!/usr/bin/env bash
# Written by `fps-profile init-ci`: measure {grid} again into {baseline}. Run it after a change meant
# to alter the figures, with the torch and timm versions CI installs ({workflow}), and commit the new
# baseline with the change. The old file is replaced only once the new one is complete.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
fps-profile sweep --config {grid} --out "$tmp/baseline.jsonl" --no-progress >/dev/null
mv "$tmp/baseline.jsonl" {baseline}
echo "wrote {baseline} ($(wc -l < {baseline}) rows)"
"""


def _toml_value(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value)  # a TOML basic string, integer or float is also valid JSON


def grid_toml(settings: dict) -> str:
    """``.fps-profile/grid.toml``: ``settings`` (sweep TOML keys -> values), one per line."""
    head = ("# Written by `fps-profile init-ci`: the cells the memory gate measures (`fps-profile sweep --config`;\n"
            "# keys as `fps-profile sweep --help` lists them, each list crossed with the others). After editing,\n"
            f"# refresh the baseline: bash {REFRESH}\n")
    return head + "".join(f"{k} = {_toml_value(v)}\n" for k, v in settings.items())


def files(settings: dict, *, version: str, python: str, versions: dict[str, str], install: list[str]) -> dict[str, str]:
    """Path (relative to the repository) -> text of every file but the baseline.

    Args:
        settings: The grid (sweep TOML keys -> values).
        version: fps-profile's version, for the record.
        python: The Python version CI sets up.
        versions: ``torch``, ``torchvision`` and ``timm`` versions CI installs (the baseline's).
        install: Further install commands (the user's package and fps-profile).
    """
    names = dict(grid=GRID, gate=GATE, refresh=REFRESH, baseline=BASELINE, workflow=WORKFLOW)
    steps = [line.format(**versions) for line in _INSTALL] + list(install)
    return {
        WORKFLOW: _WORKFLOW.format(version=version, python=python, gate_step=GATE_STEP,
                                   install="\n".join(" " * 10 + line for line in steps), **names),
        GRID: grid_toml(settings),
        GATE: _GATE.format(**names),
        REFRESH: _REFRESH.format(**names),
    }
