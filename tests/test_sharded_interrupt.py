"""Ctrl-C during a world-size-2 cpu cell: the driver, its fork server, the measurement and both rank
processes are gone within 10 s (the README's guarantee), and the row measured before stays whole."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from fps_profile import procs
from fps_profile.rows.store import read_results
from interrupts import GONE_WITHIN_S, PLUGIN, all_gone, hung_pids, make_plugin_site, wait_until


def _default_sigint() -> None:  # see interrupts._default_sigint: a background shell ignores SIGINT
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_sigint_during_a_sharded_cpu_cell_leaves_no_rank_behind(tmp_path):
    site = make_plugin_site(tmp_path / "site", PLUGIN, {"hang_pid": "Hang"}, "hang_plugin")
    hang_dir = tmp_path / "hang"
    hang_dir.mkdir()
    out = tmp_path / "r.jsonl"
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "FPS_TEST_HANG_DIR": str(hang_dir)}
    with open(tmp_path / "driver.err", "w") as errf:
        driver = subprocess.Popen(
            [sys.executable, "-m", "fps_profile", "sweep", "--no-progress", "--model", "test_vit", "--batch-size", "1",
             "--phase", "select", "--selector", "magnitude,hang_pid", "--world-size", "2", "--repeats", "1",
             "--warmup", "0", "--timeout", "300", "--out", str(out)],
            stdout=subprocess.DEVNULL, stderr=errf, env=env, start_new_session=True, preexec_fn=_default_sigint)
        err = lambda: (tmp_path / "driver.err").read_text(errors="replace")[-4000:]  # noqa: E731
        started = []
        try:
            # Both ranks hang in the selector (each writes its pid).
            assert wait_until(lambda: len(hung_pids(hang_dir)) == 2 or driver.poll() is not None, 240), "no hang"
            assert driver.poll() is None, err()
            started = [driver.pid, *procs.descendants(driver.pid)]
            ranks = hung_pids(hang_dir)
            assert set(ranks) <= set(started), (ranks, started)  # the ranks are the driver's descendants
            os.kill(driver.pid, signal.SIGINT)
            code = driver.wait(timeout=60)
            assert wait_until(lambda: all_gone(started), GONE_WITHIN_S), [p for p in started if procs.alive(p)]
        finally:
            procs.kill([p for p in [driver.pid, *started] if procs.alive(p)])
            driver.wait()
    assert code == 130, (code, err())
    assert [(r.selector, r.status, r.world_size) for r in read_results(out)] == [("magnitude", "ok", 2)]
