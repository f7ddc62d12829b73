"""Run one function on N CPU ranks (gloo) and return what each rank returned.

:func:`run_ranks` starts every rank as ``python -m fps_profile.measure.distributed._rank``
in one new process group per call, so that the whole call can be killed at once:

* a rank that raises ends the call with :class:`RankError` naming the rank and its
  one-line exception (a :class:`~fps_profile.errors.UserError` raised in a rank is
  raised again as a ``UserError``); the other ranks, which would otherwise wait in
  a collective, are killed with it;
* ranks still running past ``timeout_s`` are killed and :class:`RankTimeout` is raised;
* any exception in the caller while it waits (Ctrl-C, the CLI's SIGTERM) kills the
  group before it propagates; a caller killed outright (SIGTERM without a handler,
  SIGKILL) takes the ranks with it (``PR_SET_PDEATHSIG``, :mod:`fps_profile.procs`).

Rendezvous needs no guessed port: the caller hosts the ``TCPStore`` on a port the
kernel picks (port 0) and keeps it bound for the whole call; gloo's own sockets
are bound the same way. ``fn`` must be picklable by reference (a module-level
function); it is called as ``fn(rank, world_size, *args, **kwargs)``.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from fps_profile import procs as proc_tree
from fps_profile.errors import UserError

#: Marker in every rank's command line (tests find leftover ranks by it).
RANK_MODULE = "fps_profile.measure.distributed._rank"


class RankError(RuntimeError):
    """A rank failed (raised, crashed or was killed).

    Attributes:
        rank: The rank that failed first.
        reason: Its one-line exception or exit status.
        stderr: The end of that rank's stderr (its traceback), for debugging.
    """

    def __init__(self, rank: int, world_size: int, reason: str, stderr: str = "") -> None:
        super().__init__(f"rank {rank} of {world_size} failed: {reason}")
        self.rank, self.reason, self.stderr = rank, reason, stderr


class RankTimeout(RankError, TimeoutError):
    """Ranks still ran when the call's timeout passed (they are killed)."""

    def __init__(self, ranks: list[int], world_size: int, timeout_s: float) -> None:
        RuntimeError.__init__(self, f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))} of "
                                    f"{world_size} did not finish within {timeout_s:g} s")
        self.rank, self.reason, self.ranks, self.stderr = ranks[0], "timeout", ranks, ""


def _check_world_size(world_size) -> int:
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise UserError(f"world size must be an integer >= 1, not {world_size!r}")
    return world_size


def _payload(fn: Callable, args: tuple, kwargs: dict) -> bytes:
    try:
        call = pickle.dumps((fn, args, kwargs))
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise UserError(f"run_ranks needs a module-level function and picklable arguments ({exc})") from None
    main = {}
    if getattr(fn, "__module__", None) == "__main__":
        import multiprocessing.spawn

        data = multiprocessing.spawn.get_preparation_data("rank")
        main = {k: data[k] for k in ("init_main_from_name", "init_main_from_path") if k in data}
    return pickle.dumps({"sys_path": list(sys.path), "cwd": os.getcwd(), "main": main, "call": call})


def _threads(world_size: int, threads: int | None) -> int:
    if threads is not None:
        return max(1, int(threads))
    return max(1, (os.cpu_count() or 1) // world_size)


def run_ranks(fn: Callable[..., Any], world_size: int, *, args: tuple = (), kwargs: dict | None = None,
              timeout_s: float = 600.0, threads: int | None = None, backend: str = "gloo") -> list[Any]:
    """Call ``fn(rank, world_size, *args, **kwargs)`` on ``world_size`` CPU ranks.

    Each rank is a fresh interpreter with a gloo process group initialised (and
    destroyed after ``fn`` returns), ``torch`` limited to ``threads`` threads
    (default: the CPU count divided among the ranks).

    Args:
        fn: A module-level function; its return value must be picklable.
        world_size: Number of ranks.
        args, kwargs: Passed to ``fn`` after ``(rank, world_size)``.
        timeout_s: Kill every rank after this many seconds (:class:`RankTimeout`); it is
            also the process group's collective timeout.
        threads: Intra-op threads per rank.
        backend: The process group's backend: ``gloo`` (CPU ranks), or ``cpu:gloo,cuda:nccl`` for
            ranks on GPUs (rank ``r`` uses GPU ``r``, ``$LOCAL_RANK``; CPU tensors go through gloo).

    Returns:
        Every rank's return value, in rank order.

    Raises:
        RankError: A rank raised, crashed or was killed (the first one to fail is named).
        RankTimeout: Ranks ran past ``timeout_s``.
        UserError: Bad arguments, or a rank raised a ``UserError``.
    """
    import torch.distributed as dist

    world_size = _check_world_size(world_size)
    payload = _payload(fn, args, kwargs or {})
    with tempfile.TemporaryDirectory(prefix="fps-ranks-") as tmp:
        Path(tmp, "payload.pkl").write_bytes(payload)
        # The store's listening socket stays bound in this process for the whole call:
        # no window in which another program can take the port.
        store = dist.TCPStore("127.0.0.1", 0, world_size, True, timedelta(seconds=timeout_s),
                              wait_for_workers=False)
        env = {**os.environ, proc_tree.PARENT_ENV: str(os.getpid()), "FPS_RANK_STORE": f"127.0.0.1:{store.port}",
               "FPS_RANK_TIMEOUT": str(float(timeout_s)), "OMP_NUM_THREADS": str(_threads(world_size, threads)),
               "WORLD_SIZE": str(world_size), "PYTHONWARNINGS": os.environ.get("PYTHONWARNINGS", "ignore"),
               "FPS_RANK_BACKEND": backend}
        procs: list[subprocess.Popen] = []
        group: int | None = None
        try:
            for rank in range(world_size):
                err = open(Path(tmp, f"rank{rank}.stderr"), "w")
                try:
                    procs.append(subprocess.Popen(
                        [sys.executable, "-m", RANK_MODULE, tmp, str(rank)],
                        env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                        stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                        process_group=0 if group is None else group))
                finally:
                    err.close()
                if group is None:
                    group = procs[0].pid
            return _wait(procs, Path(tmp), world_size, timeout_s)
        finally:
            _kill_group(group, procs)
            del store


def _wait(procs: list[subprocess.Popen], tmp: Path, world_size: int, timeout_s: float) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        codes = [p.poll() for p in procs]
        failed = [r for r, c in enumerate(codes) if c not in (None, 0)]
        if failed:
            raise _failure(failed, codes, tmp, world_size)
        if all(c == 0 for c in codes):
            break
        if time.monotonic() > deadline:
            raise RankTimeout([r for r, c in enumerate(codes) if c is None], world_size, timeout_s)
        time.sleep(0.02)
    out = []
    for rank in range(world_size):
        result = tmp / f"rank{rank}.result"
        if not result.exists():
            raise RankError(rank, world_size, "exited without a result")
        out.append(pickle.loads(result.read_bytes()))
    return out


def _failure(failed: list[int], codes: list[int | None], tmp: Path, world_size: int) -> Exception:
    """The error of the rank that failed first.

    A rank killed by a signal is a cause (it wrote no report, and nothing a peer does
    kills it); otherwise the earliest report wins: a rank writes its report before it
    leaves the process group, so the peers' "connection closed" reports come later.
    """
    def tail(rank: int) -> str:
        try:
            return (tmp / f"rank{rank}.stderr").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    killed = [r for r in failed if codes[r] is not None and codes[r] < 0]
    if killed:
        r = killed[0]
        return RankError(r, world_size, _exit_reason(codes[r], tmp / f"rank{r}.stderr"), tail(r))
    reports = []
    for rank in range(world_size):
        path = tmp / f"rank{rank}.error"
        try:
            reports.append((path.stat().st_mtime_ns, rank, json.loads(path.read_text())))
        except (OSError, ValueError):
            continue
    if reports:
        _, rank, report = min(reports, key=lambda r: r[:2])
        if report.get("user_error"):
            return UserError(f"rank {rank}: {report['message']}")
        return RankError(rank, world_size, report["line"], tail(rank))
    rank = failed[0]
    return RankError(rank, world_size, _exit_reason(codes[rank], tmp / f"rank{rank}.stderr"), tail(rank))


def _exit_reason(code: int, stderr: Path) -> str:
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        reason = f"killed by {name}" + (" (likely out of host memory)" if name == "SIGKILL" else "")
    else:
        reason = f"exited with status {code}"
    try:
        tail = [ln for ln in stderr.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        tail = []
    return reason + (f": {tail[-1].strip()}" if tail else "")


def _kill_group(group: int | None, procs: list[subprocess.Popen]) -> None:
    """SIGKILL the call's process group (every rank and anything a rank started), then reap the ranks."""
    if group is not None:
        try:
            os.killpg(group, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    proc_tree.kill(p.pid for p in procs if p.poll() is None)  # a rank that left the group
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
