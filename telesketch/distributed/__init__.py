"""Scale-out with Ray (DESIGN.md "Scale-out"): one actor per shard owns that shard's sketches.

Ray is optional: ``pip install 'telesketch[ray]'``. Importing this package works without it;
building a :class:`ShardedSketches` without Ray raises :class:`RayNotInstalledError`.
"""
from telesketch.distributed.cluster import (
    ROUTE_SEED,
    RayNotInstalledError,
    ShardedSketches,
    key_shard_ids,
    routed_by_source,
    shard_ids,
    shard_spec,
    shard_specs,
    source_shard_ids,
    split_by_shard,
    split_by_source,
)

__all__ = ["ROUTE_SEED", "RayNotInstalledError", "ShardedSketches", "key_shard_ids",
           "routed_by_source", "shard_ids", "shard_spec", "shard_specs",
           "source_shard_ids", "split_by_shard", "split_by_source"]
