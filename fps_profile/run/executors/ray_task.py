"""The inside of one Ray task: measure a cell on this worker, stopping when the sweep stops wanting it.

:func:`run_cell` is the task's body; :class:`SweepToken` is the actor a sweep keeps alive while it
wants its tasks to run (:mod:`fps_profile.run.executors.ray_executor` is the driver's side).
"""

from __future__ import annotations

import os
import socket
import threading
import time

from fps_profile.measure.backends import backend_for
from fps_profile.rows.cell import Cell
from fps_profile.rows.result import Result
from fps_profile.run.isolation import client, kill_measurements, run_isolated

TOKEN_POLL_S = 1.0  # how often a running task asks whether its sweep still wants it
_SERVER_ENV: tuple | None = None  # the environment this worker's fork server was started with


class Abandoned(Exception):
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


class TokenWatch:
    """Polls a :class:`SweepToken` without blocking: at most one ping in flight, one per ``every_s``."""

    def __init__(self, token, every_s: float = TOKEN_POLL_S) -> None:
        import ray

        self.ray, self.token, self.every_s = ray, token, every_s
        self.ping, self.next = None, 0.0

    def check(self) -> None:
        """Raise :class:`Abandoned` once the token is known dead."""
        if self.token is None:
            return
        if self.ping is not None:
            ready, _ = self.ray.wait([self.ping], timeout=0)
            if not ready:
                return
            try:
                self.ray.get(self.ping)
            except self.ray.exceptions.RayActorError:
                raise Abandoned("the sweep was interrupted or its driver is gone") from None
            self.ping = None
        if time.monotonic() >= self.next:
            self.ping, self.next = self.token.alive.remote(), time.monotonic() + self.every_s


def measure_cancellably(cell: Cell, timeout_s: float | None, watch: TokenWatch | None = None) -> Result:
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


def run_cell(cell_json: str, timeout_s: float | None, token=None) -> str:
    """Body of one Ray task: measure a cell in a fresh process on this worker; its row as JSON.

    Ray reuses worker processes, and gives each task its own
    ``CUDA_VISIBLE_DEVICES``; the fork server (one per worker process) is
    restarted whenever the environment differs from the one it started with.
    A cancelled task kills its measurement in flight (see :func:`measure_cancellably`).
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
    watch = TokenWatch(token) if token is not None else None
    if watch is not None:
        try:
            ray.get(token.alive.remote())
        except ray.exceptions.RayActorError:
            raise Abandoned("the sweep was interrupted or its driver is gone") from None
    if (os.environ.get("FPS_PROFILE_ISOLATION") or "fork") == "fork":
        server.start()  # from the main thread: the server dies with the thread that starts it
    row = measure_cancellably(cell, timeout_s, watch)
    row.env.setdefault("host", socket.gethostname())
    row.env["ray_node_id"] = ray.get_runtime_context().get_node_id()
    if backend_for(cell.device).gpus(cell.device):
        row.env["ray_gpu_ids"] = [str(g) for g in ray.get_gpu_ids()]
    return row.to_json()
