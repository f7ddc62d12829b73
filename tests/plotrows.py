"""Synthetic result rows for the plot and report tests: a known grid with OOM, error and missing cells."""

from __future__ import annotations

from fps_profile.rows.result import Result

MiB = 1024**2
BATCHES = (1, 2, 4, 8)
PARAMS = {"small_vit": 1_000_000, "big_vit": 4_000_000}
ENV = {"torch": "2.14.1", "timm": "1.0.31", "fps_profile": "0.1.0", "git_commit": "0123456789abcdef",
       "device_name": "Test CPU", "host": "h"}


def row(selector, model, batch, phase, peak=None, *, status="ok", wall=None, device="cpu", dtype="float32",
        env=None, **kw) -> Result:
    return Result(selector=selector, model=model, batch_size=batch, dtype=dtype, device=device, phase=phase,
                  status=status, peak_allocated_bytes=peak if status == "ok" else None,
                  wall_time_s=wall if status == "ok" else None, params_total=PARAMS.get(model, 1000),
                  env=dict(ENV if env is None else env), **kw)


def peak_of(name: str, model: str, batch: int) -> int:
    """The synthetic peak: GPS grows 20 MiB a sample, FPS barely above the floor."""
    scale = PARAMS[model] // 1_000_000
    base = {"floor": 10, "fps": 11, "gps": 30, "magnitude": 11, "random": 11, "full": 50}[name] * scale
    slope = {"floor": 1, "fps": 1, "gps": 20, "magnitude": 1, "random": 1, "full": 5}[name]
    return (base + slope * batch) * MiB


TIME_PER_SAMPLE = {"floor": 0.01, "fps": 0.05, "gps": 0.02, "magnitude": 0.001, "random": 0.002, "full": 0.03}


def time_of(name: str, batch: int) -> float:
    return TIME_PER_SAMPLE[name] * batch


REFERENCES = {"floor": ("inference", None), "full": ("train_step", None)}


def grid(**kw) -> list[Result]:
    """Two models x batches 1-8 on cpu/float32.

    Holes: big_vit GPS and full fine-tuning are OOM at batch 8; small_vit random is
    missing at batch 4; small_vit magnitude is an error at batch 2.
    """
    rows = []
    for model in PARAMS:
        for b in BATCHES:
            for name in ("floor", "fps", "gps", "magnitude", "random", "full"):
                if model == "small_vit" and name == "random" and b == 4:
                    continue
                status = "ok"
                if model == "big_vit" and name in ("gps", "full") and b == 8:
                    status = "oom"
                if model == "small_vit" and name == "magnitude" and b == 2:
                    status = "error"
                phase, sel = REFERENCES.get(name, ("select", name))
                rows.append(row(sel, model, b, phase, peak_of(name, model, b), status=status,
                                wall=time_of(name, b), **kw))
                if phase == "select":
                    rows.append(row(sel, model, b, "train_step", peak_of("full", model, b) - MiB,
                                    status=status, wall=time_of("full", b), **kw))
    return rows


def find(rows, *, model, selector, batch, phase="select") -> Result:
    return next(r for r in rows if r.model == model and r.selector == selector and r.batch_size == batch
                and r.phase == phase)


def write_results(path, rows) -> None:
    """Write ``rows`` as a results file (tests only; sweeps append row by row)."""
    from pathlib import Path

    Path(path).write_text("".join(r.to_json() + "\n" for r in rows))
