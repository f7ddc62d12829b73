"""A fork server for isolated measurements: imports once, forks a fresh child per cell.

``python -m fps_profile.forkserver`` imports torch, timm and fps_profile, then
serves requests read as JSON lines on stdin: for each, it forks a child that
measures one cell (writing its row to a file) and answers with the child's exit
status, killing it past its timeout. The server itself never touches a device,
allocates tensors or starts thread pools, so each child starts as clean as a
new interpreter, minus ~4 s of imports.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the parent dies, so nothing outlives a killed driver."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the server still exits on stdin EOF
        pass


def _serve() -> None:
    _die_with_parent()
    import timm  # noqa: F401  (imported once here, inherited by every child)
    import torch  # noqa: F401

    from fps_profile.runner import measure_to_file  # noqa: F401

    out = sys.stdout
    sys.stdout = sys.stderr  # nothing but replies goes to the pipe
    out.write(json.dumps({"ready": os.getpid()}) + "\n")
    out.flush()
    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(req)
        reply = _wait(pid, req.get("timeout"))
        out.write(json.dumps(reply) + "\n")
        out.flush()


def _child(req: dict) -> None:
    code = 1
    try:
        _die_with_parent()
        fd = os.open(req["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        import warnings

        warnings.simplefilter("ignore")
        from fps_profile.runner import measure_to_file

        measure_to_file(req["cell"], req["out"])
        code = 0
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(code)


def _wait(pid: int, timeout: float | None) -> dict:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return {"exitcode": os.waitstatus_to_exitcode(status)}
        if deadline is not None and time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return {"timeout": True}
        time.sleep(0.02)


class ForkServerClient:
    """The driver's handle on one fork server (started lazily, restarted if it dies)."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def _start(self) -> None:
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        self._proc = subprocess.Popen([sys.executable, "-m", "fps_profile.forkserver"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        ready = self._proc.stdout.readline()
        if not ready:
            raise RuntimeError("the fork server did not start")

    def run(self, cell_json: str, out: str, err: str, timeout: float | None) -> dict:
        """Measure one cell; returns ``{"exitcode": n}`` or ``{"timeout": True}``."""
        with self._lock:
            for attempt in range(2):
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
                self.close()
            return {"exitcode": None, "server_died": True}

    def close(self) -> None:
        if self._proc is not None:
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


if __name__ == "__main__":
    _serve()
