"""Selection and sparse fine-tuning on models sharded with FSDP2, on CPU ranks (gloo).

* :func:`~fps_profile.measure.distributed.launch.run_ranks` runs a function on N ranks
  and returns what each returned;
* :func:`~fps_profile.measure.distributed.shard.shard_model` applies ``fully_shard``
  block by block, :func:`~fps_profile.measure.distributed.shard.local_batch` gives a
  rank its slice of the global batch;
* :func:`fps_profile.select` on a sharded model returns the rank's part of the
  single-process mask on the global batch (:mod:`fps_profile.selection.sharding`);
* :func:`~fps_profile.measure.distributed.sparse.make_sparse_trainable_sharded` is the
  exact sparse step on the shards;
* :func:`~fps_profile.measure.distributed.memory.rank_peaks` measures each rank's live
  tensor bytes, and :func:`~fps_profile.measure.distributed.cells.measure_cell` one cell
  on N ranks.
"""
