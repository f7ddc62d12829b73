"""The backend table: where a cell is measured (``cpu``, ``cuda[:N]``, ``sim[:target]``).

Each backend is one object that owns its device check, environment facts, memory size,
scheduling needs and how a phase is measured (the shared protocol is
:func:`fps_profile.measure.runner.measure_phase`; a backend supplies its hooks). Everything
else asks :func:`backend_for` instead of looking at the device string. A new backend (mps,
xpu) is one module and one line in :data:`BACKENDS`.
"""

from __future__ import annotations

import importlib
from typing import Any, ClassVar

from fps_profile.errors import UserError

#: Device prefix -> ``"module:Class"`` (imported when first used).
BACKENDS: dict[str, str] = {
    "cpu": "fps_profile.measure.backends.cpu:CpuBackend",
    "cuda": "fps_profile.measure.backends.cuda:CudaBackend",
    "sim": "fps_profile.sim.backend:SimBackend",
}
_loaded: dict[str, Backend] = {}


class Backend:
    """What every backend provides; subclasses override the hooks they need.

    Attributes:
        name: Its :data:`BACKENDS` prefix.
        predicts: Its figures are predictions, not measurements (no wall time; memory and
            FLOPs are deterministic, so the gate judges them exactly).
        timed: Rows carry wall times.
        time_noise: Why its wall times are noise, not a measurement the gate should fail on (None:
            they can be trusted). The gate then compares memory only unless asked for time.
    """

    name: ClassVar[str] = ""
    predicts: ClassVar[bool] = False
    timed: ClassVar[bool] = True
    time_noise: ClassVar[str | None] = None

    def matches(self, device: str) -> bool:
        """Whether ``device`` names this backend (``name`` or ``name:...``)."""
        return device == self.name or device.startswith(self.name + ":")

    def check(self, device: str, *, local: bool = True) -> None:
        """Validate ``device`` before anything runs (one-line :class:`UserError`).

        Args:
            device: The device name.
            local: Also check that it exists on this machine (False when another machine runs the cells).
        """

    def env(self, device: str) -> dict[str, Any]:
        """Facts about ``device`` for a row's ``env`` (name, memory, driver ...)."""
        return {}

    def memory_bytes(self, device: str) -> int | None:
        """The device's memory, where known without measuring (the max-batch search's default budget)."""
        return None

    def gpus(self, device: str, world_size: int = 1) -> int:
        """GPUs a cell on ``device`` with ``world_size`` ranks occupies at once (what an executor reserves)."""
        return 0

    def measure(self, cell, row) -> None:
        """Fill ``row`` with the measurement of ``cell`` (raises on failure; the runner records it)."""
        raise NotImplementedError

    # -- the phase hooks (fps_profile.measure.phases) ------------------------------------------------
    def train_mask(self, model, batches, cell, budget, options):
        """The mask a sparse ``train_step`` trains (built outside the measured run)."""
        from fps_profile.measure import phases

        return phases.select_fn(model, batches, cell.selector, budget, cell.scope, options,
                                seed=getattr(cell, "seed", 0))()

    def finetune_mask(self, model, batches, cell, budget, options):
        """``(mask, peak bytes of its selection or None)`` for a ``finetune`` cell: the mask the
        ``select`` phase computes (the cell's knobs and seed)."""
        from fps_profile.knobs import Knobs
        from fps_profile.measure import phases

        return phases.select_fn(model, batches, cell.selector, budget, cell.scope, options, Knobs.of(cell),
                                cell.seed)(), None

    def finetune_feed(self, cell, model, batches, steps):
        """What a ``finetune`` cell trains and evaluates on (:mod:`fps_profile.measure.feed`)."""
        from fps_profile.measure.feed import feed_for
        from fps_profile.measure.inputs import cell_data

        data = cell_data(cell.data, cell.seed) if cell.data is not None else None
        return feed_for(cell, model, data, steps)

    def train_step(self, model, batch, mask, knobs, trainer=None, lr: float = 1e-3):
        """The ``train_step`` callable for ``batch``, training ``mask`` through ``trainer``
        (:data:`fps_profile.rows.values.TRAINERS`; None: fps-profile's own step) with AdamW at
        learning rate ``lr``."""
        from fps_profile.measure import phases

        return phases.trainer_fn(trainer)(model, *batch, mask=mask, lr=lr, knobs=knobs)

    def select_trainable(self, model, budget, scope) -> int | None:
        """Trainable scalars of a selection when known before it runs (None: counted on its mask)."""
        return None


def backend_for(device: str) -> Backend:
    """The backend of ``device``, or a one-line error naming the known ones."""
    prefix = str(device).partition(":")[0]
    path = BACKENDS.get(prefix)
    if path is None:
        raise UserError(f"unknown device {device!r} (use {', '.join(n + '[:...]' for n in BACKENDS)}: "
                        "cpu, cuda, cuda:N, sim or sim:<target>)")
    if prefix not in _loaded:
        module, _, cls = path.partition(":")
        _loaded[prefix] = getattr(importlib.import_module(module), cls)()
    backend = _loaded[prefix]
    if not backend.matches(device):
        raise UserError(f"unknown device {device!r}")
    return backend


def check_device(device: str, *, local: bool = True) -> None:
    """Validate a device name without using it (see :meth:`Backend.check`)."""
    backend_for(device).check(device, local=local)


def predicts(device: str) -> bool:
    """Whether rows of ``device`` are predictions (see :attr:`Backend.predicts`); unknown devices: False."""
    try:
        return backend_for(device).predicts
    except UserError:
        return False


def time_noise(device: str) -> str | None:
    """Why wall times of ``device`` are noise (see :attr:`Backend.time_noise`); None: they can be
    trusted, or the device is unknown here."""
    try:
        return backend_for(device).time_noise
    except UserError:
        return None
