"""The layout stays as docs/architecture.md draws it, and its tables are where a change is made.

* the package's top level holds few modules, no module is long, no module imports another
  module's private names, and no two modules import each other (directly or round a circle);
* a toy phase and a toy knob, each declared once in its table (plus the code that applies it),
  are measured on cpu and sim with keys, labels and rows derived from the tables.

The layers themselves are checked by ``lint-imports`` (the contract in ``pyproject.toml``;
``.ci/run`` runs it).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fps_profile"


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def test_top_level_is_small_and_modules_are_short():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 8, top
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > 300}
    assert not long, long


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def test_no_module_imports_a_private_name_of_another_package():
    """A name (or module) starting with ``_`` is imported only inside the package that defines it."""
    found = []
    mods = modules()
    for module, path in mods.items():
        here = _package_of(module, path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fps_profile"):
                target = node.module
                names = [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("fps_profile")]
            else:
                continue
            for full in names:
                parts = full.split(".")
                private = next((i for i, p in enumerate(parts) if p.startswith("_") and not p.startswith("__")), None)
                if private is None:
                    continue
                owner = ".".join(parts[:private])  # the package (or module) the private name belongs to
                if not (here == owner or here.startswith(owner + ".")):
                    found.append(f"{module}: {full}")
    assert not found, found


def test_no_import_cycles():
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("fps_profile", include_external_packages=False)
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for m in sorted(graph.modules):
        if m not in index:
            visit(m)
    assert not cycles, cycles


TOY = '''
import json
import sys

import torch

from fps_profile.rows import phases, schema, values

# A knob: repeat every batch `toy_repeat` times. One declaration in the cell schema ...
schema.register_axis(schema.Axis("toy_repeat", 1, values.positive_int("toy_repeat"), label=lambda v: f"+x{v}",
                                 swept=True, grid="toy_repeat", flag="--toy-repeat", doc="toy knob"))
# ... and a phase: an eval forward of the repeated batch. One declaration in the phase table ...
phases.register_phase(phases.Phase("toy", "a forward of the batch repeated toy_repeat times", "none",
                                   lambda v: "toy", "selection", "toyphase:build_toy", passes=("forward",)))

from fps_profile.measure.runner import measure
from fps_profile.rows.cell import Cell
from fps_profile.rows.label import describe
from fps_profile.run.grid import Grid

grid = Grid(models=["test_vit"], batch_sizes=[2], phases=["toy"], toy_repeat=[1, 3], warmup=0, repeats=1,
            devices=["cpu", "sim:cpu"])
out = []
for cell in grid.cells():
    row = measure(cell)
    out.append({"key": repr(cell.key()), "label": describe(row), "status": row.status, "error": row.error,
                "peak": row.peak_allocated_bytes, "device": row.device, "toy_repeat": row.toy_repeat,
                "row_key": repr(row.key())})
print(json.dumps(out))
'''

BUILDER = '''
from fps_profile.measure.phases import Prepared, inference_fn

def build_toy(cell, model, batches, budget, options, backend):
    x = batches[0][0]
    return Prepared(inference_fn(model, x.repeat(cell.toy_repeat, *[1] * (x.dim() - 1))), 0)
'''


@pytest.mark.slow
def test_a_toy_phase_and_knob_declared_once_are_measured_on_cpu_and_sim(tmp_path):
    (tmp_path / "toyphase.py").write_text(BUILDER)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(TOY)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=600, env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [r["status"] for r in rows] == ["ok"] * 4, rows
    by = {(r["device"], r["toy_repeat"]): r for r in rows}
    assert by["cpu", 3]["label"] == "test_vit b=2 float32 cpu toy +x3" and by["cpu", 1]["label"].endswith(" toy")
    assert "('toy_repeat', 3)" in by["cpu", 3]["key"] and "toy_repeat" not in by["cpu", 1]["key"]
    assert all(r["key"] == r["row_key"] for r in rows)  # the row reads back the cell's key
    for device in ("cpu", "sim:cpu"):
        assert by[device, 3]["peak"] > by[device, 1]["peak"]  # the knob is applied
    for repeat in (1, 3):
        assert by["cpu", repeat]["peak"] == by["sim:cpu", repeat]["peak"]  # sim:cpu predicts cpu to the byte
