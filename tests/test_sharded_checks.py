"""Sharded cells that cannot run end in one-line UserErrors before anything is measured."""

from __future__ import annotations

import pytest

from fps_profile.errors import UserError
from fps_profile.measure.distributed.checks import check_sharded
from fps_profile.rows.cell import Cell
from fps_profile.run.grid import Grid


def _grid(**kw) -> Grid:
    base = dict(selectors=["fps"], models=["test_vit"], batch_sizes=[2], devices=["cpu"], phases=["select"])
    return Grid(**(base | kw))


@pytest.mark.parametrize("kw,words", [
    (dict(world_sizes=[2], amp=["bf16"]), "without amp"),
    (dict(world_sizes=[1, 2], phases=["train_floor"], checkpointing=[True]), "without amp, checkpointing"),
    (dict(offload=["cpu"], devices=["sim:cpu"], micro_batch=[1], batch_sizes=[4], phases=["train_step"]),
     "micro-batches"),
])
def test_the_grid_refuses_knobs_sharded_ranks_do_not_run(kw, words):
    with pytest.raises(UserError, match=words) as err:
        _grid(**kw).validate()
    assert "\n" not in str(err.value)


def test_the_same_knobs_pass_without_sharding():
    _grid(world_sizes=[1], amp=["bf16"]).validate()


def test_more_ranks_than_gpus_is_refused_on_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    ok = Cell(model="test_vit", batch_size=1, phase="select", selector="fps", device="cuda", world_size=2)
    check_sharded(ok)
    with pytest.raises(UserError, match="world size 4 on cuda needs 4 GPUs on this machine, it has 2") as err:
        check_sharded(Cell(model="test_vit", batch_size=1, phase="select", selector="fps", device="cuda",
                           world_size=4))
    assert "\n" not in str(err.value)
    check_sharded(Cell(model="test_vit", batch_size=1, phase="select", selector="fps", device="cuda", world_size=4),
                  local=False)  # another machine runs it (Ray): its GPUs are not this one's


def test_a_gpu_index_is_refused_for_a_sharded_cell():
    with pytest.raises(UserError, match="one GPU per rank"):
        check_sharded(Cell(model="test_vit", batch_size=1, phase="select", selector="fps", device="cuda:1",
                           world_size=2), local=False)


def test_sim_cells_need_no_gpus():
    check_sharded(Cell(model="hf:llama-tiny", batch_size=1, seq_len=8, phase="train_step", device="sim:h100",
                       world_size=64))
