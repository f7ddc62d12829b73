"""What one sweep cell reserves on a Ray cluster, and the placement group of a sharded cell.

A cell on ``cuda`` takes as many GPUs as it has ranks (the backend table's ``gpus(device,
world_size)``); a cell with ``world_size`` ranks on ``cpu`` or ``cuda`` takes one CPU per rank;
anything else (``sim``, whatever its world size: one simulated rank) one CPU slot.

A cell of more than one rank reserves everything at once in a placement group of one bundle
(``STRICT_PACK``: one node), and its task runs inside it: the cell's worker starts its ranks
there as processes of its own (:func:`fps_profile.measure.distributed.launch.run_ranks`), so
they share the node's GPUs Ray gave the task (``CUDA_VISIBLE_DEVICES``) and die with it. A
cell no node can hold is refused before anything is submitted.
"""

from __future__ import annotations

from fps_profile.errors import UserError


def world_size(cell) -> int:
    return int(getattr(cell, "world_size", None) or 1)


def is_cuda(device: str) -> bool:
    return device == "cuda" or device.startswith("cuda:")


def cell_resources(cell) -> dict[str, float]:
    """Ray resources of ``cell``'s task: ``{"CPU": n, "GPU": g}`` (GPU only where it takes some)."""
    from fps_profile.measure.backends import backend_for

    gpus = backend_for(cell.device).gpus(cell.device, world_size(cell))
    ranks = world_size(cell) if (gpus or cell.device == "cpu") else 1
    out = {"CPU": float(max(1, ranks))}
    if gpus:
        out["GPU"] = float(gpus)
    return out


def needs_placement_group(cell) -> bool:
    """Whether ``cell`` reserves its resources as a placement group (several ranks at once)."""
    return world_size(cell) > 1 and (cell.device == "cpu" or is_cuda(cell.device))


def task_options(cell, accelerator_type: str | None = None) -> dict:
    """``ray.remote(...).options(**...)`` resources of ``cell``'s task outside a placement group."""
    need = cell_resources(cell)
    out = {"num_cpus": need["CPU"]}
    if "GPU" in need:
        out["num_gpus"] = need["GPU"]
        if accelerator_type:
            out["accelerator_type"] = accelerator_type
    return out


def placement(ray, cell, accelerator_type: str | None = None):
    """A placement group holding ``cell``'s resources on one node, and its task's options inside it.

    Returns:
        ``(group, options)``; remove the group with :func:`release` once the task is done.
    """
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    bundle = dict(cell_resources(cell))
    if accelerator_type and "GPU" in bundle:
        bundle[f"accelerator_type:{accelerator_type}"] = 0.001  # Ray's own marker of the node's GPU type
    group = placement_group([bundle], strategy="STRICT_PACK", name=f"fps-profile ws={world_size(cell)}")
    options = task_options(cell)
    options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
        placement_group=group, placement_group_bundle_index=0, placement_group_capture_child_tasks=True)
    return group, options


def release(ray, group) -> None:
    """Remove a placement group (its resources go back to the cluster); a gone one is fine."""
    if group is None:
        return
    from ray.util.placement_group import remove_placement_group

    try:
        remove_placement_group(group)
    except Exception:  # noqa: BLE001 - already removed, or Ray shutting down
        pass


def check_fits(ray, cells) -> None:
    """Refuse a cell whose ranks no single node of the cluster can hold (it would wait forever)."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for cell in cells:
        if not needs_placement_group(cell):
            continue
        need = cell_resources(cell)
        if not any(all(node.get(k, 0) >= v for k, v in need.items()) for node in nodes):
            what = " and ".join(f"{v:g} {k}" for k, v in need.items())
            raise UserError(f"{cell.label()}: world size {world_size(cell)} needs {what} on one node, and no node "
                            "of the Ray cluster has that many (ranks of a cell run on one node)")
