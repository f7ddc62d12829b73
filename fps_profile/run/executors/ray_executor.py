"""Run sweep cells as Ray tasks, across the GPUs and machines of a Ray cluster.

Each cell is one Ray task that asks for one GPU per rank on CUDA (``num_gpus=1``
at world size 1), or one CPU slot on ``cpu`` and ``sim``; a cell of several ranks
reserves its GPUs (or CPUs) at once in a placement group on one node
(:mod:`~fps_profile.run.executors.ray_resources`). Inside the task the measurement still runs
in a fresh process (:func:`~fps_profile.run.isolation.run_isolated`, through the
worker's own fork server), so peaks stay as clean as with the local executor.
Rows come back to the driver as tasks finish (``ray.wait``); the driver alone
writes the results file. A task that fails outright (its worker or node died,
and ``retries`` more attempts failed too) becomes a row with status ``error``.

Rows gain ``env.ray_node_id`` and, on CUDA, ``env.ray_gpu_ids`` (the node's
GPU ids Ray assigned); ``env.host`` and ``env.device_name`` come from
:func:`fps_profile.measure.env.collect` as always.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator, Sequence

from fps_profile.errors import UserError
from fps_profile.run.executors.ray_resources import check_fits, needs_placement_group, placement, release, \
    task_options
from fps_profile.rows.result import Result
from fps_profile.rows.cell import Cell
from fps_profile.measure.runner import one_line
from fps_profile.run.executors.ray_task import SweepToken, run_cell

INSTALL_HINT = "pip install 'fps-profile[ray]'"
OBJECT_STORE_BYTES = 128 * 2**20  # rows are a few KiB; a local instance needs no more

CANCEL_GRACE_S = 10.0  # a cancelled task has this long to stop its measurement before it is force-cancelled
FORCE_WAIT_S = 20.0  # and its worker this long to be gone after the force-cancel


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UserError(f"--executor ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def _is_cuda(device: str) -> bool:
    from fps_profile.measure.backends import backend_for

    return backend_for(device).gpus(device) > 0


def cancel(ray, refs: list) -> None:
    """Cancel ``refs`` and wait until every one has ended; force-cancel those that do not.

    A plain ``ray.cancel`` raises ``KeyboardInterrupt`` in a running task, whose
    measurement is then killed (:func:`~fps_profile.run.executors.ray_task.measure_cancellably`). Ray does not
    promise delivery (a task just being dispatched can miss it, and may even be
    reported cancelled while it starts to run: such a task stops by itself when
    it sees its sweep's :class:`SweepToken` dead, within ``TOKEN_POLL_S``), so a
    task not ended after ``CANCEL_GRACE_S`` is force-cancelled: Ray kills its worker
    process, and the fork server and measurement below it die with it. Worst
    case, every process of the sweep is gone ``CANCEL_GRACE_S + FORCE_WAIT_S``
    seconds after the interruption.
    """
    for ref in refs:
        ray.cancel(ref)
    _, left = ray.wait(refs, num_returns=len(refs), timeout=CANCEL_GRACE_S)
    if left:
        for ref in left:
            ray.cancel(ref, force=True)
        ray.wait(left, num_returns=len(left), timeout=FORCE_WAIT_S)


def probe(address: str) -> None:
    """Fail fast on a ``host:port`` where nothing listens (Ray itself would retry for minutes)."""
    host, sep, port = address.rpartition(":")
    if address.startswith("ray://") or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as exc:
        raise UserError(f"cannot connect to Ray at {address}: {exc.strerror or exc} "
                        "(is 'ray start --head' running there?)") from None


class RayExecutor:
    """Cells as Ray tasks; rows yielded to the driver in the order tasks finish.

    Args:
        address: Ray cluster to use: None (``RAY_ADDRESS`` if set, else a new
            local instance with this machine's CPUs and GPUs, gone with the
            sweep), ``auto`` (the cluster this machine belongs to, started with
            ``ray start``), ``host:port`` (its head node), or ``ray://host:port``
            (Ray Client; needs ``ray[client]``). Ignored when this process is
            already connected (``ray.init`` called before).
        retries: Extra attempts of a task whose worker or node died.
        accelerator_type: Run CUDA cells only on GPUs of this Ray accelerator
            type (e.g. ``H100``), so that a mixed cluster gives comparable rows.

    Raises:
        UserError: Ray is not installed, or ``retries`` is negative.
    """

    name = "ray"
    remote = True  # devices are those of the cluster's workers, not of the driver

    def __init__(self, address: str | None = None, retries: int = 0, accelerator_type: str | None = None) -> None:
        _import_ray()
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise UserError(f"retries must be an integer >= 0, not {retries!r}")
        self.address = address
        self.retries = retries
        self.accelerator_type = accelerator_type
        self._task = None
        self._token = None

    def _connect(self):
        ray = _import_ray()
        if not ray.is_initialized():
            address = self.address or os.environ.get("RAY_ADDRESS") or "local"
            kwargs = dict(address=address, log_to_driver=False, logging_level=logging.ERROR)
            if address == "local":
                kwargs.update(include_dashboard=False, object_store_memory=OBJECT_STORE_BYTES)
            probe(address)
            try:
                ray.init(**kwargs)
            except Exception as exc:  # no cluster there, no ray[client], refused, ...
                where = "a new local instance" if address == "local" else address
                raise UserError(f"cannot connect to Ray ({where}): {one_line(exc)}") from None
        if self._task is None:
            self._task = ray.remote(run_cell)
            self._token = ray.remote(num_cpus=0, max_restarts=0)(SweepToken)
        return ray

    def _check(self, ray, cells: Sequence[Cell]) -> None:
        for cell in cells:
            if _is_cuda(cell.device) and cell.device not in ("cuda", "cuda:0"):
                raise UserError(f"device {cell.device!r} with --executor ray: use --device cuda "
                                "(Ray gives each task one GPU of its own)")
        check_fits(ray, cells)
        if not any(_is_cuda(c.device) for c in cells):
            return
        have = ray.cluster_resources()
        if not have.get("GPU"):
            raise UserError("--device cuda asked for, but the Ray cluster has no GPU "
                            "(start GPU nodes with 'ray start', or use --device cpu or sim)")
        if self.accelerator_type and not have.get(f"accelerator_type:{self.accelerator_type}"):
            known = sorted(k.split(":", 1)[1] for k in have if k.startswith("accelerator_type:"))
            raise UserError(f"no GPU of accelerator type {self.accelerator_type!r} in the Ray cluster "
                            f"(it has: {', '.join(known) or 'none'})")

    def run(self, cells: Sequence[Cell], timeout_s: float | None) -> Iterator[Result]:
        """Submit every cell, then yield one row per cell as its task finishes.

        Closing the iterator early (an interrupted sweep) cancels the tasks
        still queued or running and returns once they are gone (see
        :func:`cancel`); their cells get no row and are measured on resume.

        Raises:
            UserError: No connection to Ray, or a cell the cluster cannot run
                (before any task is submitted).
        """
        if not cells:
            return
        ray = self._connect()
        self._check(ray, cells)
        token = self._token.remote()
        refs, groups = {}, {}
        try:
            for cell in cells:  # ray_resources: a GPU per rank on cuda; several ranks reserve at once
                group, need = None, task_options(cell, self.accelerator_type)
                if needs_placement_group(cell):
                    group, need = placement(ray, cell, self.accelerator_type)
                task = self._task.options(**need, max_retries=self.retries, retry_exceptions=False,
                                          name=f"fps-profile {cell.label()}")
                ref = task.remote(cell.to_json(), timeout_s, token)
                refs[ref], groups[ref] = cell, group
            pending = list(refs)
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    row = self._row(ray, ref, refs.pop(ref))
                    release(ray, groups.pop(ref))
                    yield row
        finally:
            ray.kill(token)  # first: a task Ray's cancel misses stops on its own
            if refs:
                cancel(ray, list(refs))
            for group in groups.values():
                release(ray, group)

    def _row(self, ray, ref, cell: Cell) -> Result:
        try:
            return Result.from_dict(json.loads(ray.get(ref)))
        except ray.exceptions.RayError as exc:
            cause = getattr(exc, "cause", None) if isinstance(exc, ray.exceptions.RayTaskError) else None
            tries = self.retries + 1
            return cell.empty_row(status="error", error=f"Ray task failed ({tries} attempt{'s' * (tries > 1)}): "
                                  f"{one_line(cause or exc)}")
