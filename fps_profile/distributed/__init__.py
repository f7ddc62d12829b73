"""Selection and sparse fine-tuning on models sharded with FSDP2, on CPU ranks (gloo).

* :func:`run_ranks` runs a function on N ranks and returns what each returned
  (:mod:`~fps_profile.distributed.launch`);
* :func:`shard_model` applies ``fully_shard`` block by block, :func:`local_batch`
  gives a rank its slice of the global batch (:mod:`~fps_profile.distributed.shard`);
* :func:`fps_profile.select` on a sharded model returns the rank's part of the
  single-process mask on the global batch (:mod:`~fps_profile.distributed.reduce`,
  :mod:`~fps_profile.distributed.budget`); :func:`gather_mask` puts it together;
* :func:`make_sparse_trainable_sharded` is the exact sparse step on the shards
  (:mod:`~fps_profile.distributed.sparse`);
* :func:`rank_peaks` measures each rank's live tensor bytes
  (:mod:`~fps_profile.distributed.memory`).

Everything is imported lazily: ``fps_profile.select`` imports
:mod:`~fps_profile.distributed.tensors` and nothing else from here.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "run_ranks": "launch", "RankError": "launch", "RankTimeout": "launch",
    "shard_model": "shard", "find_blocks": "shard", "local_batch": "shard", "local_batches": "shard",
    "gather_mask": "masks", "shard_mask": "masks",
    "make_sparse_trainable_sharded": "sparse", "SparseShards": "sparse", "ShardedTrainStep": "sparse",
    "clip_grad_norm_sharded": "sparse", "measure_cell": "cells",
    "rank_peaks": "memory", "RankPeaks": "memory", "ShardedLiveBytes": "memory",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"fps_profile.distributed.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'fps_profile.distributed' has no attribute {name!r}")
