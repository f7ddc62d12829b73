"""A fork server for isolated measurements: imports once, forks a fresh child per cell.

``python -m fps_profile.run.forkserver`` imports torch, timm and fps_profile, then
serves requests read as JSON lines on stdin: for each, it forks a child that
measures one cell (writing its row to a file) and answers with the child's exit
status, killing it past its timeout. The server itself never touches a device,
allocates tensors or starts thread pools, so each child starts as clean as a
new interpreter, minus ~4 s of imports. The driver's side is
:class:`fps_profile.run.isolation.ForkServerClient`.

The server dies with its starter and each child with the server
(:func:`fps_profile.procs.die_with_parent`); the server also exits when its
stdin closes.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

from fps_profile.procs import die_with_parent


def _serve() -> None:
    die_with_parent()
    import timm  # noqa: F401  (imported once here, inherited by every child)
    import torch  # noqa: F401

    from fps_profile.measure.runner import measure_to_file  # noqa: F401

    out = sys.stdout
    sys.stdout = sys.stderr  # nothing but replies goes to the pipe
    out.write(json.dumps({"ready": os.getpid()}) + "\n")
    out.flush()
    server = os.getpid()
    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(req, server)
        reply = _wait(pid, req.get("timeout"))
        out.write(json.dumps(reply) + "\n")
        out.flush()


def _child(req: dict, server: int) -> None:
    code = 1
    try:
        die_with_parent(server)
        fd = os.open(req["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        import warnings

        warnings.simplefilter("ignore")
        from fps_profile.measure.runner import measure_to_file

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


if __name__ == "__main__":
    _serve()
