"""Sweeps through ``--executor ray`` on a local two-CPU Ray instance.

Ray's workers run with ``OMP_NUM_THREADS=1`` (one CPU slot per cell), so the
local sweeps compared against them run with one thread too.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from fps_profile.cli import main
from fps_profile.rows.store import read_results
from fps_profile.rows.cell import Cell
from fps_profile import procs
from interrupts import (GONE_WITHIN_S, all_gone, assert_no_measurements, describe, fps_processes, hung_pids,
                        measurements, wait_until)

MODEL = "test_vit"
SMALL = ["--model", MODEL, "--batch-size", "1", "--repeats", "1", "--warmup", "0", "--no-progress"]

PLUGIN = '''
import os, time
from fps_profile.selection.selectors.base import Selector


def _ray_worker():
    """Pid of the Ray worker above this measurement (child of a fork server child of it), or None."""
    server = os.getppid()
    with open(f"/proc/{server}/stat") as f:
        worker = int(f.read().rsplit(")", 1)[1].split()[1])
    with open(f"/proc/{worker}/cmdline", "rb") as f:
        return worker if f.read().startswith(b"ray::") else None


class Crash(Selector):
    """The measurement process dies."""
    def prepare(self, model, batches, targets):
        os._exit(3)


class Hang(Selector):
    """Hangs (leaving its pid in $FPS_TEST_RAY_DIR) until the test creates ``no-hang`` there, then fails."""
    def prepare(self, model, batches, targets):
        site = os.environ["FPS_TEST_RAY_DIR"]
        open(os.path.join(site, f"hang-{os.getpid()}"), "w").close()
        deadline = time.monotonic() + 600
        while not os.path.exists(os.path.join(site, "no-hang")) and time.monotonic() < deadline:
            time.sleep(0.1)
        raise RuntimeError("released by the test")


class Lose(Selector):
    """Kills the Ray worker running the task, as a lost node would (counting attempts)."""
    def prepare(self, model, batches, targets):
        with open(os.path.join(os.environ["FPS_TEST_RAY_DIR"], "attempts.txt"), "a") as f:
            f.write("attempt\\n")
        worker = _ray_worker()
        if worker is not None:
            os.kill(worker, 9)
        os._exit(5)
'''
PLUGINS = {"ray_crash": "Crash", "ray_hang": "Hang", "ray_lose": "Lose"}


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A local Ray instance (2 CPUs) whose workers, like this driver, know the test selectors."""
    ray = pytest.importorskip("ray")
    site = tmp_path_factory.mktemp("site")
    (site / "ray_test_plugin.py").write_text(textwrap.dedent(PLUGIN))
    dist = site / "ray_test_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ray-test-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[fps_profile.selectors]\n" + "".join(
        f"{name} = ray_test_plugin:{cls}\n" for name, cls in PLUGINS.items()))
    from fps_profile.selection.selectors import SELECTORS

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        mp.setenv("FPS_TEST_RAY_DIR", str(site))
        mp.syspath_prepend(str(site))
        plugin = importlib.import_module("ray_test_plugin")
        for name, cls in PLUGINS.items():
            SELECTORS.register(name, getattr(plugin, cls))
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 2**20, log_to_driver=False)
        try:
            yield site
        finally:
            ray.shutdown()
            for name in PLUGINS:
                SELECTORS.unregister(name)


@pytest.fixture(scope="module")
def one_thread():
    """Local sweeps with one torch thread, as in a Ray CPU slot (fresh fork server before and after)."""
    from fps_profile.run.isolation import client

    client().close()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield
    client().close()


def _arm_hang(site) -> None:
    """Forget earlier hung pids; the next ``ray_hang`` measurements hang until :func:`_release_hang`."""
    for old in site.glob("hang-*"):
        old.unlink()
    (site / "no-hang").unlink(missing_ok=True)


def _release_hang(site) -> None:
    """From now on ``ray_hang`` fails at once (status ``error``), so a resumed sweep needs no short timeout."""
    (site / "no-hang").touch()


def _sweep(capsys, *args: str) -> tuple[int, str]:
    rc = main(["sweep", *args])
    return rc, capsys.readouterr().err


def _canonical(row) -> str:
    """A row as JSON without what must differ between two runs: when, how long sim took, where Ray ran it."""
    data = json.loads(row.to_json())
    data.pop("timestamp")
    data["env"] = {k: v for k, v in data["env"].items() if not k.startswith("ray_")}
    data["env"].get("sim", {}).pop("seconds", None)
    return json.dumps(data, sort_keys=True)


def test_missing_ray_fails_before_anything_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    out = tmp_path / "r.jsonl"
    rc, err = _sweep(capsys, *SMALL, "--phase", "inference", "--executor", "ray", "--out", str(out))
    assert rc == 2
    assert "pip install 'fps-profile[ray]'" in err
    assert err.startswith("fps-profile: error:") and err.count("\n") == 1
    assert not out.exists()


def test_an_address_where_nothing_listens_fails_fast():
    import socket

    from fps_profile.errors import UserError
    from fps_profile.run.executors.ray_executor import probe

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free once closed: nothing listens there
    with pytest.raises(UserError, match=f"cannot connect to Ray at 127.0.0.1:{port}: .*ray start --head"):
        probe(f"127.0.0.1:{port}")
    probe("auto")  # left to Ray
    probe("ray://127.0.0.1:1")


def test_cells_the_cluster_cannot_run_fail_before_submitting(ray_cluster, monkeypatch):
    import ray

    from fps_profile.errors import UserError
    from fps_profile.run.executors import get_executor

    with pytest.raises(UserError, match="retries must be an integer >= 0"):
        get_executor("ray", retries=-1)
    executor = get_executor("ray")
    with pytest.raises(UserError, match="use --device cuda"):
        next(iter(executor.run([Cell(MODEL, 1, device="cuda:1")], 10)))
    with pytest.raises(UserError, match="Ray cluster has no GPU"):
        next(iter(executor.run([Cell(MODEL, 1, phase="inference", device="cuda")], 10)))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0, "GPU": 2.0, "accelerator_type:A100": 1.0})
    with pytest.raises(UserError, match=r"accelerator type 'H100' in the Ray cluster \(it has: A100\)"):
        next(iter(get_executor("ray", accelerator_type="H100").run([Cell(MODEL, 1, device="cuda")], 10)))


def test_cpu_sweep_same_rows_as_local(ray_cluster, tmp_path, capsys, one_thread):
    args = [*SMALL, "--selector", "magnitude,ray_crash", "--phase", "inference,select"]
    local, remote = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    assert _sweep(capsys, *args, "--out", str(local))[0] == 0
    rc, err = _sweep(capsys, *args, "--executor", "ray", "--out", str(remote))
    assert rc == 0, err
    want = {r.key(): r for r in read_results(local)}
    got = {r.key(): r for r in read_results(remote)}
    assert len(read_results(remote)) == len(got) == 3 and got.keys() == want.keys()
    for key, row in got.items():
        assert row.status == want[key].status
        assert row.peak_allocated_bytes == want[key].peak_allocated_bytes
        assert row.params_total == want[key].params_total and row.params_trainable == want[key].params_trainable
        assert len(row.wall_times_s) == len(want[key].wall_times_s)
        assert row.env["ray_node_id"] and row.env["host"] == want[key].env.get("host", row.env["host"])
    by_phase = {(r.phase, r.selector): r for r in got.values()}
    ok = by_phase["inference", None]
    assert ok.status == "ok" and ok.env["device_name"] == want[ok.key()].env["device_name"]
    assert ok.env["torch_threads"] == 1
    crashed = by_phase["select", "ray_crash"]
    assert crashed.status == "error" and "status 3" in crashed.error
    assert crashed.env["host"] and crashed.env["ray_node_id"]  # which node it crashed on


def test_sim_sweep_same_bytes_as_local(ray_cluster, tmp_path, capsys, one_thread):
    pytest.importorskip("fps_profile.sim")
    args = [*SMALL, "--device", "sim", "--selector", "fps,gps", "--phase", "inference,select"]
    local, remote = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    assert _sweep(capsys, *args, "--out", str(local))[0] == 0
    rc, err = _sweep(capsys, *args, "--executor", "ray", "--out", str(remote))
    assert rc == 0, err
    want = sorted(_canonical(r) for r in read_results(local))
    got = sorted(_canonical(r) for r in read_results(remote))
    assert len(got) == 3 and got == want
    assert all(r.env["ray_node_id"] for r in read_results(remote))


def interrupt_ray_sweep(site, out) -> None:
    """A Ray sweep interrupted while a measurement hangs: every measurement is gone within 10 s, then it resumes."""
    from fps_profile.run.executors import get_executor
    from fps_profile.run.grid import Grid
    from fps_profile.run.sweep import run_sweep

    _arm_hang(site)
    grid = Grid(selectors=["ray_hang", "magnitude", "random"], models=[MODEL], batch_sizes=[1, 2],
                phases=["select"], warmup=0, repeats=1)
    seen = []

    def interrupt(row):
        seen.append(row)
        assert wait_until(lambda: hung_pids(site), STARTS_WITHIN_S)  # a hung measurement is in flight
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(grid, out, executor=get_executor("ray"), timeout_s=120, progress=False, on_row=interrupt)
    # run_sweep returns once every cancelled task has ended: nothing may still measure.
    assert_no_measurements(os.getpid(), hung_pids(site))
    assert all_gone(hung_pids(site))
    assert len(read_results(out)) == len(seen) == 1
    # Resume with a timeout no loaded machine reaches (the released hang fails at once).
    _release_hang(site)
    report = run_sweep(grid, out, executor=get_executor("ray"), timeout_s=300, progress=False)
    assert report.skipped == len(seen) and report.measured == 6 - len(seen)
    rows = read_results(out)
    assert len(rows) == len({r.key() for r in rows}) == 6
    status = {(r.selector, r.batch_size): r.status for r in rows}
    assert status == {(s, b): "error" if s == "ray_hang" else "ok" for s in grid.selectors for b in (1, 2)}
    assert all_gone(hung_pids(site)) and not measurements(os.getpid())


def test_interrupted_sweep_cancels_its_tasks_and_resumes(ray_cluster, tmp_path):
    interrupt_ray_sweep(ray_cluster, tmp_path / "r.jsonl")


# How long a hung measurement may take to start: a precondition, not the guarantee under test. Ray runs its
# workers at nice 15, so on a CPU saturated by other work the first import of torch can take minutes.
STARTS_WITHIN_S = 300


@contextlib.contextmanager
def _no_leftover(ray, ref):
    """Force-cancel ``ref`` if the test fails before it ends, so that its measurement cannot start late and
    be taken for the next test's (a stress run failed that way)."""
    try:
        yield
    except BaseException:
        ray.cancel(ref, force=True)
        raise


def test_force_cancel_of_a_task_that_ignores_cancel_kills_its_measurement(ray_cluster, monkeypatch):
    """A task deaf to the plain cancel (as when Ray's interrupt misses it) is force-cancelled after the grace."""
    import ray

    from fps_profile.run.executors import ray_executor

    _arm_hang(ray_cluster)
    monkeypatch.setattr(ray_executor, "CANCEL_GRACE_S", 2.0)

    @ray.remote(num_cpus=1)
    def deaf(cell_json):
        import signal as sig

        sig.signal(sig.SIGINT, sig.SIG_IGN)  # Ray's KeyboardInterrupt never arrives
        from fps_profile.run.isolation import run_isolated
        from fps_profile.rows.cell import Cell

        while True:
            try:
                return run_isolated(Cell.from_json(cell_json), 300).to_json()
            except KeyboardInterrupt:
                pass

    cell = Cell(MODEL, 1, selector="ray_hang", warmup=0, repeats=1)
    ref = deaf.remote(cell.to_json())
    with _no_leftover(ray, ref):
        assert wait_until(lambda: hung_pids(ray_cluster), STARTS_WITHIN_S)
        start = time.monotonic()
        ray_executor.cancel(ray, [ref])
        took = time.monotonic() - start
        assert ray_executor.CANCEL_GRACE_S <= took < ray_executor.CANCEL_GRACE_S + ray_executor.FORCE_WAIT_S, took
        assert wait_until(lambda: all_gone(hung_pids(ray_cluster)), GONE_WITHIN_S), describe(hung_pids(ray_cluster))
        with pytest.raises(ray.exceptions.RayError):
            ray.get(ref, timeout=30)


def test_a_task_the_cancel_misses_stops_when_its_sweep_token_dies(ray_cluster):
    """Ray's cancel can miss a task being dispatched (and report it cancelled while it runs): such a task
    ends its measurement by itself once the sweep's token actor is dead."""
    import ray

    from fps_profile.run.executors import ray_task

    _arm_hang(ray_cluster)
    token = ray.remote(num_cpus=0, max_restarts=0)(ray_task.SweepToken).remote()
    cell = Cell(MODEL, 1, selector="ray_hang", warmup=0, repeats=1)
    ref = ray.remote(ray_task.run_cell).options(num_cpus=1).remote(cell.to_json(), 300, token)
    with _no_leftover(ray, ref):
        assert wait_until(lambda: hung_pids(ray_cluster), STARTS_WITHIN_S)
        ray.kill(token)  # and no ray.cancel: as if it never reached the task
        hung = hung_pids(ray_cluster)
        assert wait_until(lambda: all_gone(hung), GONE_WITHIN_S), describe(hung, hung)
        with pytest.raises(ray.exceptions.RayTaskError, match="interrupted or its driver is gone"):
            ray.get(ref, timeout=60)


@pytest.mark.slow
def test_task_lost_with_its_worker_is_an_error_row_and_retried(ray_cluster, tmp_path, capsys):
    attempts = ray_cluster / "attempts.txt"
    attempts.unlink(missing_ok=True)
    out = tmp_path / "r.jsonl"
    args = [*SMALL, "--selector", "ray_lose,magnitude", "--phase", "select", "--executor", "ray",
            "--out", str(out)]
    rc, err = _sweep(capsys, *args, "--retries", "1")
    assert rc == 0, err
    rows = {r.selector: r for r in read_results(out)}
    assert attempts.read_text().count("attempt") == 2  # the first try and one retry
    assert rows["ray_lose"].status == "error" and "Ray task failed (2 attempts)" in rows["ray_lose"].error
    assert rows["magnitude"].status == "ok"
    rc, err = _sweep(capsys, *args, "--retry-failed")
    assert rc == 0, err
    assert attempts.read_text().count("attempt") == 3 and len(read_results(out)) == 3


@pytest.mark.slow
def test_killed_driver_on_a_running_cluster_resumes(ray_cluster, tmp_path, capsys):
    import ray

    _arm_hang(ray_cluster)
    out = tmp_path / "r.jsonl"
    args = [*SMALL, "--selector", "ray_hang,magnitude,random", "--phase", "select", "--executor", "ray",
            "--address", ray.get_runtime_context().gcs_address, "--out", str(out)]
    driver = subprocess.Popen([sys.executable, "-m", "fps_profile", "sweep", *args, "--timeout", "120"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert wait_until(lambda: out.exists() and out.read_text().count("\n") >= 1 and hung_pids(ray_cluster),
                          STARTS_WITHIN_S)
    finally:
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    partial = read_results(out)
    hung = hung_pids(ray_cluster)
    assert 1 <= len(partial) < 3 and hung
    # The cluster ends the dead driver's tasks; their measurements die with their workers.
    assert wait_until(lambda: all_gone(hung), GONE_WITHIN_S), describe(hung, hung)
    _release_hang(ray_cluster)
    rc, err = _sweep(capsys, *args, "--timeout", "300")
    assert rc == 0, err
    rows = read_results(out)
    assert len(rows) == len({r.key() for r in rows}) == 3
    assert [r.to_json() for r in rows[:len(partial)]] == [r.to_json() for r in partial]  # nothing rewritten
    assert {r.selector: r.status for r in rows} == {"ray_hang": "error", "magnitude": "ok", "random": "ok"}


@pytest.mark.slow
def test_killed_driver_of_a_private_instance_takes_everything_with_it(ray_cluster, tmp_path):
    """SIGKILL of a driver that started its own Ray: its workers, fork servers and measurements all go."""
    _arm_hang(ray_cluster)
    out = tmp_path / "r.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    driver = subprocess.Popen([sys.executable, "-m", "fps_profile", "sweep", *SMALL, "--selector", "ray_hang",
                               "--phase", "select", "--executor", "ray", "--out", str(out), "--timeout", "300"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        assert wait_until(lambda: hung_pids(ray_cluster), STARTS_WITHIN_S)
        started = fps_processes(driver.pid)
        assert set(hung_pids(ray_cluster)) <= set(started)
    finally:
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    assert wait_until(lambda: all_gone(started), GONE_WITHIN_S), describe([p for p in started if procs.alive(p)])
