"""Device names: ``cpu``, ``cuda[:N]`` (checked to exist), ``sim[:target]``."""

from __future__ import annotations

import torch

from fps_profile.errors import UserError


def resolve_device(name: str) -> torch.device:
    """A real torch device for ``name``; fails clearly on CUDA without a GPU."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r} (use cpu, cuda, cuda:N or sim)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r} asked for, but no CUDA GPU is available here "
                            "(use --device cpu, or --device sim to predict GPU memory)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device {name!r} does not exist ({torch.cuda.device_count()} GPU(s) here)")
    elif device.type != "cpu":
        raise UserError(f"unsupported device {name!r} (use cpu, cuda, cuda:N or sim)")
    return device


def check_device(name: str, *, local: bool = True) -> None:
    """Validate a device name of a sweep (``cpu``, ``cuda[:N]``, ``sim[:target]``) without using it.

    Args:
        name: The device name.
        local: Also check that a CUDA device exists on this machine (off when the
            cells run on other machines, e.g. Ray workers).
    """
    if name == "sim" or name.startswith("sim:"):
        from fps_profile.sim import check_sim_device

        check_sim_device(name)
    elif local:
        resolve_device(name)
    else:
        try:
            device = torch.device(name)
        except RuntimeError:
            raise UserError(f"unknown device {name!r} (use cpu, cuda, cuda:N or sim)") from None
        if device.type not in ("cpu", "cuda"):
            raise UserError(f"unsupported device {name!r} (use cpu, cuda, cuda:N or sim)")
