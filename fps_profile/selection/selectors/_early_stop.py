"""Where a statistics-only forward may stop: right after the last use of the last target.

FPS and Wanda read the *inputs* of the target weights' linear and convolution
calls and nothing else, so whatever the forward computes after the last such
call (on a language model the frozen ``lm_head`` and its ``[tokens, vocab]``
logits, on an image model the classifier trained whole) is never used.
:class:`~fps_profile.selection.selectors._activations.InputStats` stops each forward
there (:class:`StopForward`, raised by its watcher right after that call's
statistic is added), so its peak is the weights plus the activations up to
that layer. The statistics are bit-identical: the same ops on the same inputs
in the same order; only what comes after is skipped.

**The order.** Where the last use is cannot be read from the module tree: a
weight may be used several times (weight tying, a block called twice, a
weight passed to ``F.linear`` by another module), each use counts, and a
module's place in ``named_modules()`` says nothing about when or how often it
runs. A first real pass that records the order would cost a whole forward and
its peak. So the same forward runs once on fake tensors (``FakeTensorMode``:
shapes and dtypes only, no memory, no FLOPs; every dispatch mode, i.e. the
memory trackers and FLOP counters, is suspended meanwhile) with the watcher in
record mode, which lists the target uses in execution order. On the ``sim``
backend the parameters already are fake tensors; the trace reuses their mode.
The real forward is then checked against that list use by use and stops after
its last entry.

**Fallbacks to the full forward** (the statistics are then those of the whole
forward, as before):

* the trace fails: code that needs values (data-dependent control flow, an
  ``.item()``) or an operator without a fake kernel;
* the real forward's target uses depart from the trace's (another target, or
  another order) before the stop; the trace is then not used again.

Whatever the trace changes in the model (LeViT caches its attention biases in
eval mode, a module may count its calls) is put back before the real forward
(every module's attributes and, one level down, its dict and list attributes,
by identity), so the real forward starts from the state the trace started
from. No ``nn.Module`` hook sees the trace, and autocast's cache of weight
copies is off during it (a fake copy cached there would stand in for the real
one). A model that catches the stop gets it again at its next torch call, and
nothing after the stop counts. What is assumed: the real forward makes no
target use after the trace's last one while agreeing with it up to there
(control flow past the last scored layer that depends on values, or on state
deeper than that snapshot, while everything before did not).

**Cost.** One fake forward per model, input signature (shape, strides, dtype,
device, autocast) and target set, kept for the model's lifetime while a
fingerprint of its modules, parameters and buffers still matches. On one core
of a busy 2-core machine: 0.2 s for ViT-B/16, 0.2-0.6 s for ResNet-50 (the
fake BatchNorm is a decomposition), 0.4-0.7 s for Swin-T. A selection
repeated on the same model (the runner's timed repeats after its warm-up)
does not trace again.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Hashable

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils._python_dispatch import _disable_current_modes


class StopForward(Exception):
    """Raised inside the forward right after the last target use; caught by whoever runs the forward.

    An ``Exception`` rather than a ``BaseException`` so that ``nn.Module`` runs its
    ``always_call`` forward hooks as the stop unwinds (the peak breakdown's module
    stack relies on them).
    """


class Plan:
    """The target uses one forward is expected to make (weight ids, in order) and how far it got.

    Attributes:
        stopped: The last expected use happened; nothing after it may count.
        diverged: A use departed from the expected order; the forward runs to its end.
    """

    def __init__(self, expected: tuple[int, ...]) -> None:
        self.expected = expected
        self.done = 0
        self.stopped = self.diverged = False

    def passed(self, key: int) -> bool:
        """Count one use of the target weight with id ``key``; True when the forward may stop now."""
        if self.diverged:
            return False
        if self.done >= len(self.expected) or self.expected[self.done] != key:
            self.diverged = True
            return False
        self.done += 1
        self.stopped = self.done == len(self.expected)
        return self.stopped


#: model -> {(input signature, targets): (fingerprint, uses or None)}
_ORDERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def plan_for(model: nn.Module, x: torch.Tensor, targets: Hashable,
             recorder: Callable[[], object]) -> Plan | None:
    """A :class:`Plan` for one forward of ``model`` on ``x``, or None (run the whole forward).

    Args:
        targets: Identifies the target set (part of the cache key).
        recorder: Makes the watcher in record mode: a ``TorchFunctionMode`` whose
            ``uses`` list gets the id of every target weight use, in order.
    """
    key = (_signature(x), targets)
    fingerprint = _fingerprint(model)
    per_model = _ORDERS.setdefault(model, {})
    known = per_model.get(key)
    if known is None or known[0] != fingerprint:
        known = per_model[key] = (fingerprint, _trace(model, x, recorder))
    return Plan(known[1]) if known[1] else None


def forget(model: nn.Module, x: torch.Tensor, targets: Hashable) -> None:
    """Run every later forward of ``model`` on inputs like ``x`` whole (its trace did not hold)."""
    per_model = _ORDERS.get(model)
    if per_model is not None:
        per_model[(_signature(x), targets)] = (_fingerprint(model), None)


def _trace(model: nn.Module, x: torch.Tensor, recorder: Callable[[], object]) -> tuple[int, ...] | None:
    """The target uses of one forward on fake tensors, in order (None: unknown)."""
    snapshot = _Snapshot(model)
    watch = recorder()
    try:
        with _no_module_hooks(model), _no_autocast_cache(), _disable_current_modes(), _fake_mode(model, x), watch:
            model(x)
    except Exception:  # noqa: BLE001 - any failure only means "order unknown"
        return None
    finally:
        snapshot.restore()  # e.g. LeViT's attention-bias cache now holds a fake tensor
    return tuple(watch.uses)


_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


@contextlib.contextmanager
def _no_module_hooks(model: nn.Module):
    """No ``nn.Module`` hook (the model's or global) sees the trace: it is no call of the model.
    The hook dicts are emptied and refilled in place (the same objects, as :class:`_Snapshot` checks)."""
    from torch.nn.modules import module as nn_module

    tables = [getattr(nn_module, f"_global{name}") for name in _HOOKS]
    tables += [getattr(m, name) for m in model.modules() for name in _HOOKS]
    saved = [(table, list(table.items())) for table in tables if table]
    for table, _ in saved:
        table.clear()
    try:
        yield
    finally:
        for table, items in saved:
            table.clear()
            table.update(items)


@contextlib.contextmanager
def _no_autocast_cache():
    """Autocast's cache of low-precision weight copies is neither read nor written by the trace:
    a fake copy left there would stand in for the real one in the real forward (and on the sim
    the real forward would then not allocate it)."""
    enabled = torch.is_autocast_cache_enabled()
    torch.set_autocast_cache_enabled(False)
    try:
        yield
    finally:
        torch.set_autocast_cache_enabled(enabled)


def _fake_mode(model: nn.Module, x: torch.Tensor) -> FakeTensorMode:
    """The mode of fake parameters or input (the sim's), else a new one that takes real tensors."""
    for t in (x, *model.parameters(), *model.buffers()):
        if isinstance(t, FakeTensor):
            return t.fake_mode
    return FakeTensorMode(allow_non_fake_inputs=True)


def _signature(x: torch.Tensor) -> tuple:
    autocast = []
    for device in ("cpu", "cuda"):
        try:
            autocast.append((torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)))
        except RuntimeError:  # pragma: no cover - a build without that device type
            autocast.append(None)
    return (tuple(x.shape), tuple(x.stride()), x.dtype, str(x.device), torch.is_grad_enabled(), tuple(autocast))


def _fingerprint(model: nn.Module) -> tuple:
    """Identity of every module, its forward, parameters and buffers: a changed model gets a new trace."""
    return tuple((id(m), type(m), id(vars(m).get("forward")), m.training,
                  tuple(id(p) for p in m._parameters.values()), tuple(id(b) for b in m._buffers.values()))
                 for m in model.modules())


def _contents(value: dict | list) -> tuple:
    """A dict's keys and values, or a list's items (compared by identity in :func:`_same`)."""
    if isinstance(value, dict):
        return tuple(value.keys()), list(value.values())
    return None, list(value)


def _same(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] and len(a[1]) == len(b[1]) and all(x is y for x, y in zip(a[1], b[1]))


class _Snapshot:
    """Every module's attributes, and one level into its dict and list attributes (``_parameters``,
    ``_buffers``, caches), by identity: :meth:`restore` puts back whatever a forward changed."""

    def __init__(self, model: nn.Module) -> None:
        self.items = []
        for m in model.modules():
            attrs = dict(vars(m))
            inner = {k: _contents(v) for k, v in attrs.items() if isinstance(v, (dict, list))}
            self.items.append((m, attrs, inner))

    def restore(self) -> bool:
        """Undo every change; True if there was one."""
        changed = False
        for m, attrs, inner in self.items:
            now = vars(m)
            if now.keys() != attrs.keys() or any(now[k] is not v for k, v in attrs.items()):
                now.clear()
                now.update(attrs)
                changed = True
            for k, saved in inner.items():
                value = attrs[k]
                if not _same(_contents(value), saved):
                    keys, values = saved
                    if isinstance(value, dict):
                        value.clear()
                        value.update(zip(keys, values))
                    else:
                        value[:] = values
                    changed = True
        return changed
