"""The phase table: what a measurement can run, declared once.

Results, sweeps, summaries, plots and the gate read the names, order and series names
from here; :mod:`fps_profile.measure.phases` holds the builders the ``build`` paths name
(imported only where a phase is measured, so reading rows needs no torch).

Adding a phase is one :class:`Phase` here plus its builder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass



@dataclass(frozen=True)
class Phase:
    """One row of :data:`PHASES`.

    Attributes:
        name: As rows write it (never renamed).
        doc: What runs.
        selector: ``"required"`` (one cell per selector), ``"optional"`` (one without, then one
            per selector) or ``"none"`` (measured once per model, batch, dtype and device).
        series: ``variant -> series name`` (the selector with its options, or None).
        table: The summary table it belongs to: ``"selection"``, ``"train"`` or ``"quality"``
            (:mod:`fps_profile.analysis.quality`).
        build: ``"module:function"`` of its builder (see :mod:`fps_profile.measure.phases`).
        keeps_state: Its runs leave state behind (optimizer moments), so a warm-up changes
            what the measured run needs.
        passes: ``("forward", "backward")`` subset it runs; None: the selector's.
        default: Measured by a sweep that names no phases.
        trains_mask: With a selector it trains the selector's mask, through the cell's ``trainer``
            (:data:`fps_profile.rows.values.TRAINERS`).
        trains: It changes its model (fine-tuning): measured in one run with no warm-up and no
            timed repeats (:mod:`fps_profile.measure.training`); it takes the ``steps`` and ``lr`` axes.
        baselines: Names a cell of this phase may have in place of a selector, each a series of
            its own without a budget, scope or options (``head``: the classifier alone, ``frozen``:
            nothing trained); a sweep measures them beside its selectors.
    """

    name: str
    doc: str
    selector: str
    series: Callable[[str | None], str]
    table: str
    build: str
    keeps_state: bool = False
    passes: tuple[str, ...] | None = ("forward", "backward")
    default: bool = True
    trains_mask: bool = False
    trains: bool = False
    baselines: tuple[str, ...] = ()


_BUILD = "fps_profile.measure.phases:"
PHASES: dict[str, Phase] = {p.name: p for p in (
    Phase("inference", "a plain eval-mode torch.no_grad() forward: the floor every selector is compared with",
          "none", lambda v: "floor", "selection", _BUILD + "build_inference", passes=("forward",)),
    Phase("select", "the selector on the selection batch(es), producing a mask", "required", lambda v: v,
          "selection", _BUILD + "build_select", passes=None),
    Phase("train_floor", "forward, loss and backward with every gradient dropped as it is made: the floor of "
          "any exact sparse step", "none", lambda v: "train:floor", "train", _BUILD + "build_train_floor",
          default=False),
    Phase("train_step", "one fine-tuning step (forward, loss, backward, clipping, AdamW): sparse with a "
          "selector's mask, full without one", "optional", lambda v: f"train:{v or 'full'}", "train",
          _BUILD + "build_train_step", keeps_state=True, trains_mask=True),
    Phase("finetune", "sparse fine-tuning with a selector's mask for --steps steps (AdamW, cosine schedule, "
          "clipping), then top-1 accuracy on the held-out split; full fine-tuning without a selector, and the "
          "baselines head (the classifier alone: a linear probe) and frozen (nothing trained)", "optional",
          lambda v: f"finetune:{v or 'full'}", "quality", "fps_profile.measure.finetune:build_finetune",
          keeps_state=True, default=False, trains=True, baselines=("head", "frozen")),
)}
NAMES: tuple[str, ...] = tuple(PHASES)
DEFAULTS: tuple[str, ...] = tuple(n for n, p in PHASES.items() if p.default)


def register_phase(phase: Phase) -> None:
    """Add a phase to :data:`PHASES` (after the others in their order).

    Raises:
        RuntimeError: A phase of that name exists already.
    """
    global NAMES, DEFAULTS
    if phase.name in PHASES:
        raise RuntimeError(f"a phase {phase.name!r} exists already")
    PHASES[phase.name] = phase
    NAMES = tuple(PHASES)
    DEFAULTS = tuple(n for n, p in PHASES.items() if p.default)


def get_phase(name: str) -> Phase:
    """The :data:`PHASES` entry for ``name``, or a one-line error listing them."""
    try:
        return PHASES[name]
    except KeyError:
        from fps_profile.errors import did_you_mean

        raise did_you_mean(str(name), PHASES, "phase") from None


def takes_selector(phase: str, selector: str | None) -> bool:
    """Whether a cell of ``phase`` involves ``selector`` (a budget, scope and options apply): not for
    a phase without selectors, nor for one of its baselines."""
    if selector is None:
        return False
    p = get_phase(phase)
    return p.selector != "none" and selector not in p.baselines


def trains(phase: str) -> bool:
    """Whether ``phase`` changes its model (:attr:`Phase.trains`); unknown names: False."""
    return phase in PHASES and PHASES[phase].trains


#: Baselines that train nothing (their cells take no steps or learning rate).
UNTRAINED = ("frozen",)


def takes_training(phase: str, selector: str | None) -> bool:
    """Whether a cell of ``phase`` with ``selector`` takes training steps (the ``steps`` and ``lr`` axes)."""
    return trains(phase) and selector not in UNTRAINED


def order(phase: str) -> int:
    """Position of ``phase`` in :data:`PHASES` (unknown names last)."""
    return NAMES.index(phase) if phase in PHASES else len(NAMES)


def check(names) -> None:
    """Every name is a phase (one-line error otherwise)."""
    for name in names:
        get_phase(name)


__all__ = ["DEFAULTS", "NAMES", "PHASES", "Phase", "check", "get_phase", "order", "register_phase", "takes_selector",
           "takes_training", "trains"]
