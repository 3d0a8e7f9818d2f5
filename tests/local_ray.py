"""A local Ray cluster for the tests that drive real shard actors."""
from __future__ import annotations

import time

#: Ray's node start waits a fixed 30 s for the raylet to register with the GCS (``ray._private.node``);
#: on a 2-core machine busy with the rest of the suite it can miss that once. A later try starts clean.
STARTS = 3


def start_local_ray(**kwargs) -> None:
    """``ray.init(**kwargs)``, tried up to :data:`STARTS` times when the node times out while starting
    (the error is raised again after the last try; any other error at once)."""
    import ray

    for attempt in range(1, STARTS + 1):
        try:
            ray.init(**kwargs)
            return
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception for this timeout
            if "timed out during startup" not in str(exc) or attempt == STARTS:
                raise
            ray.shutdown()
            time.sleep(2.0 * attempt)
