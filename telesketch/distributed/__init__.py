"""Scale-out with Ray (DESIGN.md "Scale-out"): one actor per shard owns that shard's sketches.

Ray is optional: ``pip install 'telesketch[ray]'``. Importing this package works without it;
building a :class:`ShardedSketches` without Ray raises :class:`RayNotInstalledError`.
"""
from telesketch.distributed.cluster import (
    ROUTE_SEED,
    RayNotInstalledError,
    ShardedSketches,
    shard_ids,
    shard_specs,
    split_by_shard,
)

__all__ = ["ROUTE_SEED", "RayNotInstalledError", "ShardedSketches", "shard_ids", "shard_specs", "split_by_shard"]
