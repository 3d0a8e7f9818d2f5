"""What every benchmark prints about the machine it ran on (``from common import machine``)."""
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
