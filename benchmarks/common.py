"""Helpers every benchmark shares: what it prints about the machine it ran on, timed client threads."""
from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> str:
    """CPU count and model, numba version and threads, and the load average right now.

    The load average matters: these machines are shared, so a figure taken under load is only
    comparable as a ratio measured in the same run.
    """
    import numba

    try:
        load = " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        load = "?"
    return (f"{os.cpu_count()} CPUs ({cpu_model()}), Python {platform.python_version()}, "
            f"numba {numba.__version__} with {numba.get_num_threads()} threads, load average {load}")


def timed_threads(target, count: int) -> float:
    """Run ``target`` on ``count`` threads at once; the wall seconds until the last one ends."""
    import threading
    import time

    threads = [threading.Thread(target=target) for _ in range(count)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start
