"""Shared by the benchmark modules: the grid, and the profiler entry points they wrap.

Every benchmark calls the same functions the CLI uses: :func:`fps_profile.measure.runner.measure`
(``fps-profile sweep`` runs it in each worker) or :func:`fps_profile.measure.phases.select_fn`
(the measured work of a ``select`` row). A benchmark whose entry point is missing
from the commit under test (an old commit, or no GPU here) raises
``NotImplementedError`` in ``setup``, which asv records as skipped.
"""

from __future__ import annotations

# Selectors and models of the deterministic (sim) and GPU tracks; "floor" is the inference row.
SELECTORS = ["fps", "gps", "magnitude", "random"]
WITH_FLOOR = ["floor"] + SELECTORS
MODELS = ["vit_tiny_patch16_224", "vit_base_patch16_224"]
BATCHES = [1, 32]
# Categories of a peak breakdown (fps_profile.rows.result.BREAKDOWN_CATEGORIES; listed here so old commits import).
CATEGORIES = ["weights", "buffers", "inputs", "gradients", "optimizer_state", "mask", "activations", "temporaries",
              "workspace", "allocator_slack"]
# Every selector, on small models, for the CPU timings.
CPU_SELECTORS = ["fps", "gps", "magnitude", "random", "wanda", "snip"]
CPU_MODELS = ["test_vit", "vit_tiny_patch16_224"]


def skip(reason: str):
    """asv's way to skip a benchmark (or one parameter combination) from ``setup``."""
    raise NotImplementedError(reason)


def require_sim() -> None:
    """Skip unless the commit under test has the ``sim`` backend."""
    try:
        import fps_profile.sim  # noqa: F401
        from fps_profile.rows.cell import Cell  # noqa: F401
        from fps_profile.measure.runner import measure  # noqa: F401
    except ImportError:
        skip("no sim backend in this commit")


def require_cuda() -> None:
    """Skip without a CUDA GPU (or without the runner in this commit)."""
    import torch

    if not torch.cuda.is_available():
        skip("no CUDA GPU")
    try:
        from fps_profile.rows.cell import Cell  # noqa: F401
        from fps_profile.measure.runner import measure  # noqa: F401
    except ImportError:
        skip("no runner in this commit")


def measure_row(selector: str, model: str, batch: int, device: str, **cell):
    """One ``select`` row (or the ``inference`` floor for ``selector == "floor"``), measured here.

    asv already runs each benchmark in a fresh process, as the profiler does, so
    :func:`fps_profile.measure.runner.measure` is called in-process.

    Raises:
        RuntimeError: The measurement failed (status ``oom`` or ``error``), so asv
            records a failure rather than a number.
    """
    from fps_profile.rows.cell import Cell
    from fps_profile.measure.runner import measure

    if selector == "floor":
        c = Cell(model=model, batch_size=batch, phase="inference", device=device, **cell)
    else:
        c = Cell(model=model, batch_size=batch, phase="select", selector=selector, device=device, **cell)
    row = measure(c)
    if row.status != "ok":
        raise RuntimeError(f"{c.label()}: {row.status}: {row.error}")
    return row


def select_callable(selector: str, model_name: str, batch: int):
    """The ``select`` phase's work on a freshly built CPU model, ready to call.

    Uses :func:`fps_profile.measure.phases.select_fn` where the commit has it (the runner's
    measured work), else :func:`fps_profile.select` (what ``fps-profile select`` runs).
    """
    import torch

    from fps_profile.models import create_model, synthetic_batches

    torch.manual_seed(0)
    model = create_model(model_name)
    batches = synthetic_batches(model, batch)
    try:
        from fps_profile.measure import phases
    except ImportError:
        import fps_profile

        return lambda: fps_profile.select(model, batches, selector, k=1)
    return phases.select_fn(model, batches, selector, phases.BudgetSpec.parse("k=1"))
