"""Nothing outlives an interrupted local sweep: Ctrl-C, SIGTERM or SIGKILL of the driver.

Ray's interruption paths are in test_ray_executor.py; every scenario is
repeated 20 times under CPU load by test_interrupt_stress.py (``-m stress``).
"""

from __future__ import annotations

import signal

import pytest

from interrupts import interrupt_local_driver


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["int", "term", "kill"])
def test_interrupted_local_sweep_leaves_nothing_running(tmp_path, sig):
    interrupt_local_driver(tmp_path, sig)


@pytest.mark.slow
def test_interrupted_spawn_worker_is_gone_too(tmp_path):
    interrupt_local_driver(tmp_path, signal.SIGTERM, isolation="spawn")
