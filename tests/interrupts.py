"""Interruption scenarios shared by the interruption tests and their stress variant.

Each scenario starts a sweep whose second cell hangs (a plugin selector that
writes ``hang-<pid>`` and sleeps), interrupts it one way, and asserts that no
process fps-profile started is alive 10 s later (checked by pid: the driver,
its fork server and the measurement, or the spawned worker) and that the row
measured before the interruption is in the results file, whole.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from fps_profile import procs
from fps_profile.rows.store import read_results

MODEL = "test_vit"
GONE_WITHIN_S = 10.0  # the guarantee the README states

PLUGIN = '''
import os, time
from fps_profile.selection.selectors.base import Selector


class Hang(Selector):
    """Never finishes (leaving its pid in $FPS_TEST_HANG_DIR)."""
    def prepare(self, model, batches, targets):
        open(os.path.join(os.environ["FPS_TEST_HANG_DIR"], f"hang-{os.getpid()}"), "w").close()
        time.sleep(600)
'''


def make_plugin_site(site: Path, source: str, selectors: dict[str, str], module: str) -> Path:
    """An installed-looking plugin in ``site``: ``module.py`` with an entry point per selector."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    dist = site / f"{module}-0.1.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[fps_profile.selectors]\n" + "".join(
        f"{name} = {module}:{cls}\n" for name, cls in selectors.items()))
    return site


def wait_until(predicate, timeout_s: float, step_s: float = 0.1) -> bool:
    """Poll ``predicate`` until it holds or ``timeout_s`` passes; its last value."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return bool(predicate())
        time.sleep(step_s)
    return True


def hung_pids(where: Path) -> list[int]:
    return [int(p.name.split("-")[1]) for p in where.glob("hang-*")]


def fps_processes(root: int) -> list[int]:
    """Fork servers, their children and spawned workers below ``root``."""
    return [pid for pid in procs.descendants(root)
            if any(m in procs.cmdline(pid) for m in (b"fps_profile.run.forkserver", b"fps_profile.run.worker"))]


def measurements(root: int) -> list[int]:
    """Measurement processes below ``root``: fork-server children and spawned workers."""
    out = []
    for pid in fps_processes(root):
        stat = procs._stat(pid)
        parent = int(stat[1]) if stat else 0
        if b"fps_profile.run.worker" in procs.cmdline(pid) or b"fps_profile.run.forkserver" in procs.cmdline(parent):
            out.append(pid)
    return out


def describe(pids, hung=()) -> str:
    """What each pid is, for a failure message: state, age, its parent and grandparent, whether it hung."""
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    out = []
    for pid in pids:
        stat = procs._stat(pid)
        if stat is None:
            out.append(f"{pid} (gone)")
            continue
        parent = int(stat[1])
        grand = int((procs._stat(parent) or ["", 0])[1])
        age = uptime - int(stat[19]) / os.sysconf("SC_CLK_TCK")
        name = lambda p: procs.cmdline(p).split(b"\0")[0:3]  # noqa: E731
        out.append(f"{pid} state {stat[0]} age {age:.1f}s{' HUNG' if pid in hung else ''} parent {parent} "
                   f"{name(parent)} grandparent {grand} {name(grand)[:1]}")
    return "; ".join(out)


def assert_no_measurements(root: int, hung=()) -> None:
    """No measurement below ``root`` within :data:`GONE_WITHIN_S`; else fail saying what lives on,
    and whether it was gone 60 s later (late) or not (leaked)."""
    if wait_until(lambda: not measurements(root), GONE_WITHIN_S):
        return
    info = describe(measurements(root), hung)
    late = wait_until(lambda: not measurements(root), 60)
    raise AssertionError(f"measurements alive {GONE_WITHIN_S:g} s after the sweep returned: {info}; "
                         f"{'gone' if late else 'still alive'} 60 s later")


def all_gone(pids) -> bool:
    return not any(map(procs.alive, pids))


def _default_sigint() -> None:
    """Ctrl-C as in a terminal: a test run in the background of a non-interactive shell inherits SIGINT
    *ignored* (POSIX), and Python then installs no KeyboardInterrupt handler, so the driver would rightly
    ignore the SIGINT this test sends (it did, in clean-clone CI runs started with `&`)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt_local_driver(tmp: Path, sig: int, isolation: str = "fork") -> None:
    """A local CLI sweep gets ``sig`` while a measurement hangs; everything it started is gone within 10 s."""
    site = make_plugin_site(tmp / "site", PLUGIN, {"hang_pid": "Hang"}, "hang_plugin")
    hang_dir = tmp / "hang"
    hang_dir.mkdir()
    out = tmp / "r.jsonl"
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "FPS_TEST_HANG_DIR": str(hang_dir), "FPS_PROFILE_ISOLATION": isolation}
    errf = open(tmp / "driver.err", "w")
    driver = subprocess.Popen(
        [sys.executable, "-X", "faulthandler", "-m", "fps_profile", "sweep", "--no-progress", "--model", MODEL,
         "--batch-size", "1",
         "--phase", "select", "--selector", "magnitude,hang_pid", "--repeats", "1", "--warmup", "0",
         "--timeout", "300", "--out", str(out)],
        # stderr to a file, not a pipe nobody reads while the driver runs (a full pipe would block it)
        stdout=subprocess.DEVNULL, stderr=errf, env=env, start_new_session=True, preexec_fn=_default_sigint)
    err = lambda: (tmp / "driver.err").read_text(errors="replace")[-4000:]  # noqa: E731
    try:
        assert wait_until(lambda: hung_pids(hang_dir) or driver.poll() is not None, 180), "no hang in 180 s"
        assert driver.poll() is None, err()
        started = [driver.pid, *fps_processes(driver.pid)]
        assert set(hung_pids(hang_dir)) <= set(started)
        assert len(started) == (3 if isolation == "fork" else 2), started  # driver, (server,) measurement
        os.kill(driver.pid, sig)
        try:
            code = driver.wait(timeout=60)
        except subprocess.TimeoutExpired:
            # Still running a minute after the signal: show where it is stuck (faulthandler dumps on SIGABRT).
            os.kill(driver.pid, signal.SIGABRT)
            driver.wait(timeout=30)
            raise AssertionError(f"the driver did not exit within 60 s of signal {sig}: {err()}") from None
        assert wait_until(lambda: all_gone(started), GONE_WITHIN_S), [p for p in started if procs.alive(p)]
    finally:
        procs.kill([driver.pid, *fps_processes(driver.pid)])
        driver.wait()
        errf.close()
    assert code == {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -9}[sig], code
    rows = read_results(out)
    assert [(r.selector, r.status) for r in rows] == [("magnitude", "ok")]
