"""Where sweep cells run: ``local`` (default) or on a cluster.

An executor takes cells and yields one result row per cell as each finishes
(in any order). Every measurement still runs in its own fresh process; the
sweep driver alone writes the results file.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from fps_profile.errors import did_you_mean
from fps_profile.run.isolation import run_isolated
from fps_profile.rows.result import Result
from fps_profile.rows.cell import Cell


class Executor(Protocol):
    name: str

    def run(self, cells: Sequence[Cell], timeout_s: float | None) -> Iterator[Result]:
        """Measure each cell; yield rows as they complete."""
        ...


class LocalExecutor:
    """One cell at a time on this machine, each in a fresh process (see :func:`run_isolated`)."""

    name = "local"

    def run(self, cells: Sequence[Cell], timeout_s: float | None) -> Iterator[Result]:
        for cell in cells:
            yield run_isolated(cell, timeout_s)


def get_executor(name: str, **kwargs) -> Executor:
    """``local`` or ``ray`` (the latter needs ``pip install fps-profile[ray]``)."""
    if name == "local":
        return LocalExecutor()
    if name == "ray":
        from fps_profile.run.executors.ray_executor import RayExecutor

        return RayExecutor(**kwargs)
    raise did_you_mean(name, ["local", "ray"], "executor")
