"""How a phase that changes its model (``finetune``) is measured on a real device.

The other phases run the same callable several times (warm-up, a memory-tracked run, timed
repeats), which a training run cannot do without training more. A training phase runs once:

1. **selection** (a selector's cell): the mask is computed once, under the memory-tracked
   run's trackers; its peak is ``select_peak_bytes`` (the ``select`` phase's figure, without
   that phase's warm-up run);
2. **steps** ``1 .. N``, in order, each training the model; no step is run that is not
   counted, so no warm-up and no repeats:

   * the **second** step (the first when ``N = 1``) is the memory-tracked run: AdamW creates
     its moments during the first step, so from the second on every step holds the same
     state and repeats the same allocations; its figures are those of a ``train_step`` row
     after its warm-up (``peak_allocated_bytes``, the breakdown, FLOPs, RSS);
   * every other step is timed alone, between device synchronisations: ``wall_times_s``,
     and ``wall_time_s``, their median, is the **time per step** (comparable with a
     ``train_step`` row's ``wall_time_s``); steps run under trackers are left out;

3. **evaluation** on the held-out split (untracked, untimed): ``eval_accuracy``, ``eval_loss``.

``frozen`` trains nothing (its row has no ``steps`` or ``lr``): its tracked and timed run is
an eval-mode forward of one batch, the ``inference`` phase's figures. The evaluation itself
(held-out chunks of :data:`~fps_profile.measure.feed.EVAL_CHUNK` samples under ``no_grad``)
is never measured. ``train_loss_final`` is the last
step's loss, ``examples_seen`` the samples of all steps.
"""

from __future__ import annotations

import contextlib
import time

import torch


def _timed(fn, device: torch.device) -> tuple[None, float]:
    """``(None, seconds)`` of one call of ``fn`` between device synchronisations (its output dropped)."""
    from fps_profile.trackers.timer import synchronize

    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    seconds = time.perf_counter() - start
    del out
    return None, seconds


def _tracked(backend, device, cell, model, row, inputs, optimizer, fn):
    from fps_profile.trackers import RssPeak

    with contextlib.ExitStack() as stack:
        fill = backend.trackers(stack, device, cell, model, inputs, optimizer)
        rss = stack.enter_context(RssPeak())
        out = fn()
    del out
    fill(row)
    row.rss_peak_bytes = rss.peak


def measure_training(backend, ft, device: torch.device, cell, model, row) -> None:
    """Run the prepared :class:`~fps_profile.measure.finetune.FineTune` ``ft`` by the protocol above
    and fill ``row``; ``backend`` is a :class:`~fps_profile.measure.backends.device.DeviceBackend`."""
    from fps_profile.trackers import median

    row.select_peak_bytes = ft.select_peak
    times = []
    tracked = min(1, ft.steps - 1)
    for i in range(ft.steps):
        if i == tracked:  # its batch in place before the region, as a train_step's is
            _tracked(backend, device, cell, model, row, [ft.stage()], ft.optimizer, ft)
        else:
            times.append(_timed(ft, device)[1])  # the loss is not kept (it would live through the next step)
    if ft.steps == 0:  # frozen: an eval forward of one batch, as the inference phase's, tracked then timed
        from fps_profile.measure.phases import inference_fn

        batch = ft.feed.train(0)
        forward = inference_fn(model, batch[0], ft.knobs)
        _tracked(backend, device, cell, model, row, [batch], None, forward)
        times.append(_timed(forward, device)[1])
    result = ft.evaluate()
    if result is not None:
        row.eval_accuracy, row.eval_loss = result
    row.train_loss_final = ft.last_loss
    row.examples_seen = ft.done * ft.feed.per_sample
    row.wall_times_s = times
    row.wall_time_s = median(times)
