"""Stress variant of every interruption test: 20 times each, both CPUs kept busy by other processes.

Not in CI (``-m stress`` selects it): ``python -m pytest -m stress tests/test_interrupt_stress.py``.
``FPS_STRESS_REPEATS`` changes the count. Ray runs its workers at nice 15, below the busy loops: run the
Ray tests at ``nice -n -15`` (as root) to put their workers level with the load (docs/cluster.md).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

import test_interrupts
import test_ray_executor
from test_ray_executor import ray_cluster  # noqa: F401,F811  (a fixture)

pytestmark = pytest.mark.stress
REPEATS = int(os.environ.get("FPS_STRESS_REPEATS", "20"))


@pytest.fixture(scope="module")
def cpu_load():
    """One busy loop per CPU, for as long as the module runs (and not longer, even if pytest is killed)."""
    spin = f"from fps_profile.procs import die_with_parent; die_with_parent({os.getpid()})\nwhile True: pass"
    burners = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(os.cpu_count() or 2)]
    yield
    for p in burners:
        p.kill()
        p.wait()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["int", "term", "kill"])
def test_local_driver_interrupted(tmp_path, cpu_load, sig):
    for i in range(REPEATS):
        test_interrupts.test_interrupted_local_sweep_leaves_nothing_running(tmp_path / str(i), sig)


def test_local_spawn_worker(tmp_path, cpu_load):
    for i in range(REPEATS):
        test_interrupts.test_interrupted_spawn_worker_is_gone_too(tmp_path / str(i))


def test_ray_sweep_interrupted(ray_cluster, tmp_path, cpu_load):  # noqa: F811
    for i in range(REPEATS):
        (tmp_path / str(i)).mkdir()
        test_ray_executor.test_interrupted_sweep_cancels_its_tasks_and_resumes(ray_cluster, tmp_path / str(i))


def test_ray_force_cancel(ray_cluster, cpu_load):  # noqa: F811
    for _ in range(REPEATS):
        with pytest.MonkeyPatch.context() as mp:
            test_ray_executor.test_force_cancel_of_a_task_that_ignores_cancel_kills_its_measurement(ray_cluster, mp)


def test_ray_token_stops_a_missed_task(ray_cluster, cpu_load):  # noqa: F811
    for _ in range(REPEATS):
        test_ray_executor.test_a_task_the_cancel_misses_stops_when_its_sweep_token_dies(ray_cluster)


def test_ray_killed_driver(ray_cluster, tmp_path, capsys, cpu_load):  # noqa: F811
    for i in range(REPEATS):
        (tmp_path / str(i)).mkdir()
        test_ray_executor.test_killed_driver_on_a_running_cluster_resumes(ray_cluster, tmp_path / str(i), capsys)


def test_ray_killed_private_driver(ray_cluster, tmp_path, cpu_load):  # noqa: F811
    for i in range(REPEATS):
        (tmp_path / str(i)).mkdir()
        test_ray_executor.test_killed_driver_of_a_private_instance_takes_everything_with_it(
            ray_cluster, tmp_path / str(i))
