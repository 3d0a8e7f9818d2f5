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


def module_at_revision(repo, rev: str, relpath: str, workdir):
    """Import ``relpath`` (e.g. ``telesketch/sketches/gapfilter.py``) as of git revision ``rev``, as a
    module named ``<stem>_base`` written into ``workdir``: the baseline of a one-process A/B."""
    import importlib.util
    import subprocess
    import sys
    from pathlib import Path

    source = subprocess.run(["git", "-C", str(repo), "show", f"{rev}:{relpath}"],
                            check=True, capture_output=True, text=True).stdout
    name = f"{Path(relpath).stem}_base"
    path = Path(workdir) / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # Numba's cache locates kernels by module
    spec.loader.exec_module(module)
    return module


def add_ab_options(ap, repo, module: str, base_default: str) -> None:
    """The options of every one-process A/B kernel benchmark (``bench_*_ab.py``): the baseline revision
    of ``module``, the workload, and rounds."""
    from pathlib import Path

    ap.add_argument("--base", default=base_default, help=f"git revision whose {module} is the baseline")
    ap.add_argument("--workload", choices=("synthetic", "spec"), default="spec",
                    help="bench_kernels' workloads: the spec's generated trace (default) or synthetic Zipf flows")
    ap.add_argument("--shared", type=Path, default=Path(repo).parent / "shared",
                    help="the shared directory holding tools/ (for --workload spec)")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "telesketch" / "bench",
                    help="where the spec workload is generated once")
    ap.add_argument("--packets", type=int, default=2_000_000, help="packets of the synthetic workload")
    ap.add_argument("--batch", type=int, default=65536, help="packets per update call")
    ap.add_argument("--rounds", type=int, default=7, help="alternating base/this-tree rounds per row")


def alternate_rounds(run_base, run_ours, rounds: int, differs) -> tuple[list, list]:
    """CPU seconds of ``rounds`` alternating runs of the baseline and this tree: ``run_*()`` returns
    ``(seconds, state)``; exits naming ``differs`` when the two final states are not equal."""
    import sys

    base_s, ours_s = [], []
    for _ in range(rounds):
        t_base, state_base = run_base()
        t_ours, state_ours = run_ours()
        if state_base != state_ours:
            sys.exit(f"{differs}: the state differs from the baseline's")
        base_s.append(t_base)
        ours_s.append(t_ours)
    return base_s, ours_s
