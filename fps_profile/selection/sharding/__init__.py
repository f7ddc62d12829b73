"""Selection on FSDP2-sharded parameters: each rank scores its own shard (statistics and
thresholds reduced across ranks), so the masks equal the single-process masks on the global batch."""
