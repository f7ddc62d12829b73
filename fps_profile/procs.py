"""Process plumbing for isolated measurements (Linux ``/proc`` and ``prctl``; no-ops elsewhere).

Every process fps-profile starts for a measurement (the fork server, its
children, spawned workers) calls :func:`die_with_parent` first, so that nothing
outlives the process that started it, however that one ends (Ctrl-C, SIGTERM,
SIGKILL, a Ray worker killed by ``ray.cancel(force=True)``).
"""

from __future__ import annotations

import os
import signal

PARENT_ENV = "FPS_PROFILE_PARENT"  # pid a started process must die with (see die_with_parent)


def die_with_parent(parent: int | None = None) -> None:
    """Get SIGKILL when the parent dies; exit now if it is already gone.

    Linux sends the signal when the *thread* that created this process ends,
    so long-lived helpers must be started from a long-lived thread. The check
    against ``parent`` closes the race of a parent that died before the
    ``prctl`` call (this process would then have been re-parented already).

    Args:
        parent: The pid this process was started by; default ``$FPS_PROFILE_PARENT`` if set.
    """
    if parent is None and os.environ.get(PARENT_ENV, "").isdigit():
        parent = int(os.environ[PARENT_ENV])
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: servers still exit on stdin EOF
        return
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def _stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/PID/stat`` after the command name (state first), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, dead but not yet reaped, counts as gone)."""
    stat = _stat(pid)
    if stat is None:
        if not os.path.isdir("/proc"):  # not Linux
            try:
                os.kill(pid, 0)
                return True
            except OSError:
                return False
        return False
    return stat[0] != "Z"


def children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (empty where there is no ``/proc``)."""
    if not os.path.isdir("/proc"):
        return []
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and int(stat[1]) == pid:
                out.append(int(entry))
    return out


def descendants(pid: int) -> list[int]:
    """Every pid below ``pid``, children first."""
    out, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        out += kids
        todo += kids
    return out


def cmdline(pid: int) -> bytes:
    """The NUL-separated command line of ``pid`` (empty when unknown)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def kill(pids) -> None:
    """SIGKILL each pid, ignoring those already gone."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
