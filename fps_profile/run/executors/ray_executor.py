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
import threading
import time
from collections.abc import Iterator, Sequence

from fps_profile.errors import UserError
from fps_profile.run.executors.ray_resources import check_fits, needs_placement_group, placement, release, \
    task_options
from fps_profile.run.isolation import client, kill_measurements, run_isolated
from fps_profile.rows.result import Result
from fps_profile.rows.cell import Cell
from fps_profile.measure.runner import one_line

INSTALL_HINT = "pip install 'fps-profile[ray]'"
OBJECT_STORE_BYTES = 128 * 2**20  # rows are a few KiB; a local instance needs no more

CANCEL_GRACE_S = 10.0  # a cancelled task has this long to stop its measurement before it is force-cancelled
FORCE_WAIT_S = 20.0  # and its worker this long to be gone after the force-cancel
TOKEN_POLL_S = 1.0  # how often a running task asks whether its sweep still wants it

_SERVER_ENV: tuple | None = None  # the environment this worker's fork server was started with


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UserError(f"--executor ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def _is_cuda(device: str) -> bool:
    return device == "cuda" or device.startswith("cuda:")


class _Abandoned(Exception):
    """The sweep that submitted this task is gone or was interrupted (its token actor is dead)."""


class SweepToken:
    """A Ray actor alive exactly while its sweep wants its tasks to run.

    The driver kills it when the sweep ends or is interrupted, and it dies with
    the driver (Ray ties an actor to its owner). Tasks poll it: Ray's own cancel
    can miss a task that is being dispatched at that moment (a known race in
    Ray), and such a task would otherwise measure on, unseen by the driver.
    """

    def alive(self) -> bool:
        return True


class _TokenWatch:
    """Polls a :class:`SweepToken` without blocking: at most one ping in flight, one per ``every_s``."""

    def __init__(self, token, every_s: float = TOKEN_POLL_S) -> None:
        import ray

        self.ray, self.token, self.every_s = ray, token, every_s
        self.ping, self.next = None, 0.0

    def check(self) -> None:
        """Raise :class:`_Abandoned` once the token is known dead."""
        if self.token is None:
            return
        if self.ping is not None:
            ready, _ = self.ray.wait([self.ping], timeout=0)
            if not ready:
                return
            try:
                self.ray.get(self.ping)
            except self.ray.exceptions.RayActorError:
                raise _Abandoned("the sweep was interrupted or its driver is gone") from None
            self.ping = None
        if time.monotonic() >= self.next:
            self.ping, self.next = self.token.alive.remote(), time.monotonic() + self.every_s


def _measure_cancellably(cell: Cell, timeout_s: float | None, watch: _TokenWatch | None = None) -> Result:
    """:func:`run_isolated` in a thread, so that a cancelled task can stop it.

    Ray cancels a running task by raising ``KeyboardInterrupt`` in the main
    thread, which a call blocked in C (waiting for the fork server) would not
    see until the measurement ends. Here the main thread waits in short steps;
    on the interrupt it kills the measurement in flight (again, until the
    thread is done: the request may reach the server just after), lets the fork
    server answer for it (so the server stays in step for the next task), and
    re-raises. Should that take longer than the driver's grace period, the
    driver force-cancels the task, which kills this worker and, with it, the
    fork server and its child (they die with their parent). ``watch`` ends the
    measurement the same way when the sweep's token dies, whether or not Ray's
    cancel arrived.
    """
    done: dict = {}
    finished = threading.Event()  # not Thread.join: an interrupted join can mark a live thread dead (3.11)

    def work() -> None:
        try:
            done["row"] = run_isolated(cell, timeout_s)
        except BaseException as exc:  # handed to the task's thread below
            done["exc"] = exc
        finally:
            finished.set()

    threading.Thread(target=work, name="fps-profile-measure", daemon=True).start()
    try:
        while not finished.wait(0.1):
            if watch is not None:
                watch.check()
    except BaseException:
        while not finished.is_set():
            kill_measurements()
            finished.wait(0.1)
        raise
    if "exc" in done:
        raise done["exc"]
    return done["row"]


def _run_cell(cell_json: str, timeout_s: float | None, token=None) -> str:
    """Body of one Ray task: measure a cell in a fresh process on this worker; its row as JSON.

    Ray reuses worker processes, and gives each task its own
    ``CUDA_VISIBLE_DEVICES``; the fork server (one per worker process) is
    restarted whenever the environment differs from the one it started with.
    A cancelled task kills its measurement in flight (see :func:`_measure_cancellably`).
    The fork server is started here, in the worker's main thread, which lives
    as long as the worker (a server started by the short-lived measuring
    thread would die with that thread). With the sweep's ``token`` dead before
    or during the measurement, the task measures nothing more and fails.
    """
    global _SERVER_ENV
    import ray

    cell = Cell.from_json(cell_json)
    env = tuple(sorted(os.environ.items()))
    server = client()
    if env != _SERVER_ENV:
        server.close()
        _SERVER_ENV = env
    watch = _TokenWatch(token) if token is not None else None
    if watch is not None:
        try:
            ray.get(token.alive.remote())
        except ray.exceptions.RayActorError:
            raise _Abandoned("the sweep was interrupted or its driver is gone") from None
    if (os.environ.get("FPS_PROFILE_ISOLATION") or "fork") == "fork":
        server.start()  # from the main thread: the server dies with the thread that starts it
    row = _measure_cancellably(cell, timeout_s, watch)
    row.env.setdefault("host", socket.gethostname())
    row.env["ray_node_id"] = ray.get_runtime_context().get_node_id()
    if _is_cuda(cell.device):
        row.env["ray_gpu_ids"] = [str(g) for g in ray.get_gpu_ids()]
    return row.to_json()


def _cancel(ray, refs: list) -> None:
    """Cancel ``refs`` and wait until every one has ended; force-cancel those that do not.

    A plain ``ray.cancel`` raises ``KeyboardInterrupt`` in a running task, whose
    measurement is then killed (:func:`_measure_cancellably`). Ray does not
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


def _probe(address: str) -> None:
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
            _probe(address)
            try:
                ray.init(**kwargs)
            except Exception as exc:  # no cluster there, no ray[client], refused, ...
                where = "a new local instance" if address == "local" else address
                raise UserError(f"cannot connect to Ray ({where}): {one_line(exc)}") from None
        if self._task is None:
            self._task = ray.remote(_run_cell)
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
        :func:`_cancel`); their cells get no row and are measured on resume.

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
                _cancel(ray, list(refs))
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
