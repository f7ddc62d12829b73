"""Sharded cells that cannot run, refused before anything is measured (one line each).

:func:`check_sharded` is what a sweep's grid calls for every cell with ``world_size`` above
1 or ``offload`` set; the ranks and the sim's simulated rank call
:func:`~fps_profile.measure.distributed.rank_phases.check_cell` again, for cells built by hand.
"""

from __future__ import annotations

from fps_profile.errors import UserError


def check_sharded(cell, *, local: bool = True) -> None:
    """Refuse a sharded ``cell`` that no backend can run (a no-op for an unsharded one).

    Args:
        cell: The cell.
        local: Also check that this machine has a GPU for each rank (``--device cuda``; False
            when an executor runs the cells on other machines).

    Raises:
        UserError: A phase or knob that sharded ranks do not run, a device other than ``cpu``,
            ``cuda`` or ``sim:<card>``, or fewer GPUs here than ranks.
    """
    from fps_profile.measure.distributed.rank_phases import check_cell, is_sharded_cell, world_size_of

    if not is_sharded_cell(cell):
        return
    check_cell(cell)
    n, device = world_size_of(cell), str(cell.device)
    if device.startswith("sim"):
        return
    if device not in ("cpu", "cuda", "cuda:0"):
        raise UserError(f"--world-size/--offload run on --device cpu, cuda (one GPU per rank) or sim:<card>, "
                        f"not {device!r}")
    if device.startswith("cuda") and local:
        import torch

        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if have < n:
            raise UserError(f"world size {n} on cuda needs {n} GPUs on this machine, it has {have} "
                            f"(--device sim:h100 predicts it without them)")
