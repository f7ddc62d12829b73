"""One rank of :func:`fps_profile.measure.distributed.launch.run_ranks`:
``python -m fps_profile.measure.distributed._rank DIR RANK``.

Reads the call from ``DIR/payload.pkl``, joins the gloo process group through the
caller's ``TCPStore`` (``$FPS_RANK_STORE``), runs the function and writes its
return value to ``DIR/rank<RANK>.result`` (atomically), or, when it raises, a
one-line report to ``DIR/rank<RANK>.error`` and exits 1. It dies with the caller.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import traceback
from pathlib import Path


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _prepare(payload: dict) -> None:
    sys.path[:] = payload["sys_path"]
    os.chdir(payload["cwd"])
    if payload["main"]:
        import multiprocessing.spawn

        multiprocessing.spawn.prepare(payload["main"])


def main(argv: list[str]) -> int:
    from fps_profile.procs import die_with_parent

    die_with_parent()
    where, rank = Path(argv[0]), int(argv[1])
    try:
        payload = pickle.loads((where / "payload.pkl").read_bytes())
        _prepare(payload)
        result = _run(pickle.loads(payload["call"]), rank, where / f"rank{rank}.error")
        _write(where / f"rank{rank}.result", pickle.dumps(result))
        return 0
    except BaseException as exc:  # noqa: BLE001 - every failure is reported, then the rank exits 1
        _report(exc, where / f"rank{rank}.error")
        return 1


def _report(exc: BaseException, path: Path) -> None:
    """Write the one-line report (once: the first failure is the one that counts)."""
    if path.exists():
        return
    from fps_profile.errors import UserError

    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
    _write(path, json.dumps({"line": line, "message": str(exc), "user_error": isinstance(exc, UserError)}).encode())
    traceback.print_exc()
    sys.stderr.flush()


def _run(call: tuple, rank: int, error: Path):
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    fn, args, kwargs = call
    world_size = int(os.environ["WORLD_SIZE"])
    timeout = timedelta(seconds=float(os.environ["FPS_RANK_TIMEOUT"]))
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    host, port = os.environ["FPS_RANK_STORE"].rsplit(":", 1)
    store = dist.TCPStore(host, int(port), world_size, False, timeout)
    backend = os.environ.get("FPS_RANK_BACKEND", "gloo")
    if "nccl" in backend:  # one GPU per rank, chosen before NCCL starts
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
    try:
        return fn(rank, world_size, *args, **kwargs)
    except BaseException as exc:
        _report(exc, error)  # before the process group goes: peers then fail after this report
        raise
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
