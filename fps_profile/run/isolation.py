"""Every measurement in a fresh process: a fork-server child (default on Linux) or a spawned worker.

:func:`run_isolated` measures one :class:`~fps_profile.measure.runner.Cell` in a
process of its own, with a timeout, and turns a crash or hang into a row with
status ``error`` or ``timeout``, so a sweep always gets a row back.

Clean-up guarantee: no process started here outlives its starter. The fork
server and spawned workers die with the thread that started them
(``PR_SET_PDEATHSIG``, see :mod:`fps_profile.procs`), fork-server children die
with the server, a timeout kills the measurement, and an exception while a
measurement runs (Ctrl-C, a cancelled Ray task) kills it before propagating.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from fps_profile import procs
from fps_profile.errors import UserError
from fps_profile.rows.result import Result
from fps_profile.rows.cell import Cell


class ForkServerClient:
    """The driver's handle on one :mod:`fps_profile.run.forkserver` process (started lazily, restarted if it dies)."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self) -> None:
        """Start the server now unless it runs (call from a long-lived thread: it dies with its starter)."""
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._start()

    def _start(self) -> None:
        env = {**os.environ, "PYTHONWARNINGS": "ignore", procs.PARENT_ENV: str(os.getpid())}
        self._proc = subprocess.Popen([sys.executable, "-m", "fps_profile.run.forkserver"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        if not self._proc.stdout.readline():
            self._proc = None
            raise RuntimeError("the fork server did not start")

    def run(self, cell_json: str, out: str, err: str, timeout: float | None) -> dict:
        """Measure one cell; returns ``{"exitcode": n}`` or ``{"timeout": True}``.

        An exception while waiting (KeyboardInterrupt, SystemExit) stops the
        server, and with it the measurement, before it propagates: the server
        would otherwise go on measuring, and answer the next request with this
        one's reply.
        """
        with self._lock:
            for _ in range(2):
                if self._proc is None or self._proc.poll() is not None:
                    self._start()
                try:
                    req = {"cell": cell_json, "out": out, "err": err, "timeout": timeout}
                    self._proc.stdin.write(json.dumps(req) + "\n")
                    self._proc.stdin.flush()
                    line = self._proc.stdout.readline()
                    if line:
                        return json.loads(line)
                except (BrokenPipeError, OSError):
                    pass
                except BaseException:
                    self.close()
                    raise
                self.close()
            return {"exitcode": None, "server_died": True}

    def kill_measurement(self) -> None:
        """Kill the measurement the server runs now, if any; the server answers for it and lives on."""
        pid = self.pid
        if pid is not None:
            procs.kill(procs.children(pid))

    def close(self) -> None:
        """Stop the server and any measurement it runs."""
        if self._proc is not None:
            procs.kill(procs.descendants(self._proc.pid))
            try:
                self._proc.kill()
                self._proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
            self._proc = None


_CLIENT: ForkServerClient | None = None


def client() -> ForkServerClient:
    """The process-wide fork server client."""
    global _CLIENT
    if _CLIENT is None:
        import atexit

        _CLIENT = ForkServerClient()
        atexit.register(_CLIENT.close)
    return _CLIENT


def kill_measurements() -> None:
    """Kill every measurement this process runs: fork-server children and spawned workers."""
    if _CLIENT is not None:
        _CLIENT.kill_measurement()
    procs.kill(pid for pid in procs.children(os.getpid()) if b"fps_profile.run.worker" in procs.cmdline(pid))


def run_isolated(cell: Cell, timeout_s: float | None = 1800.0, isolation: str | None = None) -> Result:
    """Measure ``cell`` in a fresh process.

    Args:
        cell: What to measure.
        timeout_s: Kill the worker after this many seconds (status ``timeout``).
        isolation: ``"fork"`` (default on Linux: a child of a pre-imported fork
            server) or ``"spawn"`` (a new ``python -m fps_profile.run.worker``; the
            default elsewhere, or with ``FPS_PROFILE_ISOLATION=spawn``).

    Returns:
        The worker's row; or, when the worker crashes, is killed or hangs past
        ``timeout_s``, a row with status ``error`` / ``timeout`` and the reason.
    """
    isolation = isolation or os.environ.get("FPS_PROFILE_ISOLATION") or (
        "fork" if hasattr(os, "fork") else "spawn")
    if isolation not in ("fork", "spawn"):
        raise UserError(f"isolation must be 'fork' or 'spawn', not {isolation!r}")
    with tempfile.TemporaryDirectory(prefix="fps-profile-") as tmp:
        out_file, err_file = Path(tmp, "result.json"), Path(tmp, "stderr.txt")
        if isolation == "fork":
            reply = client().run(cell.to_json(), str(out_file), str(err_file), timeout_s)
            if reply.get("timeout"):
                return cell.empty_row(status="timeout", error=f"worker did not finish within {timeout_s:g} s")
            code = reply.get("exitcode")
        else:
            cell_file = Path(tmp, "cell.json")
            cell_file.write_text(cell.to_json())
            cmd = [sys.executable, "-m", "fps_profile.run.worker", str(cell_file), str(out_file)]
            env = {**os.environ, "PYTHONWARNINGS": "ignore", procs.PARENT_ENV: str(os.getpid())}
            try:
                with open(err_file, "w") as err:
                    # subprocess.run kills the worker on any exception, a timeout included.
                    code = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=err, timeout=timeout_s,
                                          env=env).returncode
            except subprocess.TimeoutExpired:
                return cell.empty_row(status="timeout", error=f"worker did not finish within {timeout_s:g} s")
        if out_file.exists():
            try:
                return Result.from_dict(json.loads(out_file.read_text()))
            except (ValueError, TypeError) as exc:
                return cell.empty_row(status="error", error=f"worker wrote an unreadable result: {exc}")
        stderr = err_file.read_text(errors="replace") if err_file.exists() else ""
        return cell.empty_row(status="error", error=_crash_reason(code, stderr))


def _crash_reason(code: int | None, stderr: str) -> str:
    if code is not None and code < 0:
        import signal

        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        hint = " (likely out of host memory)" if name == "SIGKILL" else ""
        reason = f"worker killed by {name}{hint}"
    else:
        reason = f"worker exited with status {code}"
    tail = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    return reason + (f": {tail[-1].strip()}" if tail else "")
