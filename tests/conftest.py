"""Shared pytest fixtures: paths to the shared traces and small generated inputs."""
import os
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS_DIR))  # so tests can `import naive_hiddensketch`, `workloads`, ...

#: ../shared/traces beside the checkout (CI has it; a bare clone may not).
#: ``TELESKETCH_SHARED_TRACES`` points elsewhere (a git worktree whose parent has no shared/).
SHARED_TRACES = Path(os.environ.get("TELESKETCH_SHARED_TRACES") or TESTS_DIR.parent.parent / "shared" / "traces")


@pytest.fixture(scope="session")
def shared_traces() -> Path:
    """The directory of real captures, or a skip when it is not beside the checkout."""
    if not SHARED_TRACES.is_dir():
        pytest.skip(f"real traces not found at {SHARED_TRACES}")
    return SHARED_TRACES


def pytest_collection_finish(session):
    """GPU-twin simulator subprocesses start now and run beside the suite (see gpu_harness)."""
    import gpu_harness

    gpu_harness.prefetch_simulator_runs(session.items)


def pytest_sessionfinish(session, exitstatus):
    import gpu_harness

    gpu_harness.PREFETCH.stop()
