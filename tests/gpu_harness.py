"""Shared harness of the GPU-twin tests (``tests/test_gpu_*.py``).

CI has no GPU, so each GPU test module's checks run in a subprocess with ``NUMBA_ENABLE_CUDASIM=1``
(the variable must be set before ``numba.cuda`` is first imported, which other test modules may
already have done in the pytest process): the subprocess is the test module run as a script, which
calls :func:`script_main` and prints one JSON verdict per case. The same checks also run in-process,
for real, when the pytest process has a CUDA device (:data:`needs_device`).

A case is a function returning ``""`` when the GPU twin agrees with the CPU class, else what differs.
A test module subclasses :class:`TwinChecks` (naming its script, cases and ``run_case``) and binds
``pytest_generate_tests = gpu_harness.pytest_generate_tests``, which parametrizes the checks by case.

The simulator is slow (every GPU thread a Python thread), so a module names its ``slow_cases``:
the default run keeps at least one equality case per kernel, the slow cases run in a second
subprocess under ``@pytest.mark.slow``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Limit of one simulator subprocess (seconds): on a fresh clone it compiles every CPU kernel it touches first.
SCRIPT_TIMEOUT_S = 1200


def run_cases(cases: Iterable[str], run_case: Callable[[str], str]) -> dict:
    """``{case: {"ok": bool, "detail": str, "cpu_s": float}}`` plus the backend name under ``"_backend"``.

    ``cpu_s`` is the case's CPU time in this process (seconds; unlike wall time, it does not grow
    with the machine's load): what decides which cases are ``slow_cases``."""
    from telesketch.gpu.core import backend

    out = {"_backend": backend().name}
    for name in cases:
        start = time.process_time()
        try:
            detail = run_case(name)
        except Exception as exc:  # noqa: BLE001 - report, do not abort the other cases
            detail = f"{type(exc).__name__}: {exc}"
        out[name] = {"ok": not detail, "detail": detail, "cpu_s": round(time.process_time() - start, 2)}
    return out


def run_script(script: str, env_extra: dict, *args: str) -> subprocess.CompletedProcess:
    """Run a test module as a script with extra environment variables (15-minute limit: on a fresh
    clone every CPU kernel the cases touch is compiled first, before the simulated kernels run)."""
    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, script, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=SCRIPT_TIMEOUT_S)


class _Prefetch:
    """Simulator runs started in the background when collection ends, one at a time, in the order
    the tests will ask for them: the pytest process runs tests on one core, so on CI's two cores the
    slow simulator subprocesses run beside the rest of the suite instead of after it."""

    def __init__(self) -> None:
        self.runs: dict[tuple[str, tuple[str, ...]], tuple[threading.Event, list]] = {}
        self.proc: subprocess.Popen | None = None
        self.stopped = False

    def start(self, wanted: list[tuple[str, tuple[str, ...]]]) -> None:
        for key in wanted:
            self.runs.setdefault(key, (threading.Event(), []))
        if self.runs:
            threading.Thread(target=self._run_all, name="simulator-prefetch", daemon=True).start()

    def _run_all(self) -> None:
        for (script, cases), (done, result) in list(self.runs.items()):
            if self.stopped:
                return
            try:
                result.append(self._run(script, cases))
            except Exception as exc:  # noqa: BLE001 - handed to the test that waits for it
                result.append(exc)
            done.set()

    def _run(self, script: str, cases: tuple[str, ...]) -> subprocess.CompletedProcess:
        args = [sys.executable, script, "--cases", ",".join(cases)]
        self.proc = subprocess.Popen(args, cwd=REPO, env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"},
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = self.proc.communicate(timeout=SCRIPT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise
        return subprocess.CompletedProcess(args, self.proc.returncode, out, err)

    def result(self, script: str, cases: tuple[str, ...]) -> subprocess.CompletedProcess | None:
        """The prefetched run of ``(script, cases)``, waiting for it; None if it was not prefetched."""
        entry = self.runs.get((script, cases))
        if entry is None:
            return None
        done, result = entry
        done.wait()
        if isinstance(result[0], Exception):
            raise result[0]
        return result[0]

    def stop(self) -> None:
        self.stopped = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()


PREFETCH = _Prefetch()


def prefetch_simulator_runs(items) -> None:
    """Start the simulator subprocesses that the collected ``items`` will ask for (conftest hook;
    ``TELESKETCH_SIMULATOR_PREFETCH=0`` turns it off)."""
    if os.environ.get("TELESKETCH_SIMULATOR_PREFETCH", "1") == "0":
        return
    wanted: list[tuple[str, tuple[str, ...]]] = []
    for item in items:
        cls = getattr(item, "cls", None)
        if cls is None or not issubclass(cls, TwinChecks):
            continue
        name = getattr(item, "originalname", item.name)
        cases = {"test_simulator_matches_cpu": cls.fast_cases, "test_simulator_matches_cpu_slow":
                 lambda cls=cls: list(cls.slow_cases)}.get(name)
        if cases is not None and (key := (cls.script, tuple(cases()))) not in wanted:
            wanted.append(key)
    PREFETCH.start(wanted)


def simulator_verdict(script: str, cases: Iterable[str]) -> dict:
    """The script's verdicts for ``cases`` under the CUDA simulator (fails the test if the run fails)."""
    cases = tuple(cases)
    proc = PREFETCH.result(script, cases) or run_script(script, {"NUMBA_ENABLE_CUDASIM": "1"}, "--cases",
                                                        ",".join(cases))
    if proc.returncode != 0:
        pytest.fail(f"simulator run failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    verdict = json.loads(proc.stdout.strip().splitlines()[-1])
    assert verdict["_backend"] == "simulator"
    return verdict


def assert_clear_error_without_device(script: str) -> None:
    """With CUDA disabled and no simulator, constructing a GPU sketch names both ways out."""
    proc = run_script(script, {"NUMBA_ENABLE_CUDASIM": "0", "NUMBA_DISABLE_CUDA": "1"}, "--expect-error")
    assert proc.returncode == 0, proc.stderr[-3000:]
    message = proc.stdout.strip().splitlines()[-1]
    assert "pip install 'telesketch[gpu]'" in message and "NUMBA_ENABLE_CUDASIM=1" in message, message


def _in_process_backend() -> str | None:
    try:
        from telesketch.gpu.core import GpuUnavailableError, backend

        return backend().name
    except (ImportError, GpuUnavailableError):
        return None


#: Decorator of the in-process copies of the checks: they need a real CUDA device.
needs_device = pytest.mark.skipif(
    _in_process_backend() in (None, "simulator"),
    reason="no CUDA device in this process (the simulator subprocess tests cover the kernels)")


def script_main(cases: Iterable[str], run_case: Callable[[str], str], constructors: Iterable[Callable]) -> None:
    """A GPU test module's ``__main__``: print the JSON verdicts, or with ``--expect-error`` the
    message of the error each constructor raises (exit 1 if one unexpectedly succeeds).

    The process keeps to one CPU: the simulator runs each block's threads as Python threads that
    meet at barriers, and on several cores they would fight over the GIL for nothing."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    if "--expect-error" not in sys.argv:
        if "--cases" in sys.argv:
            wanted = sys.argv[sys.argv.index("--cases") + 1].split(",")
            cases = [c for c in cases if c in wanted]
        print(json.dumps(run_cases(cases, run_case)))
        return
    from telesketch.gpu.core import GpuUnavailableError

    message = ""
    for make in constructors:
        try:
            make()
        except GpuUnavailableError as exc:
            message = str(exc)
            continue
        sys.exit(f"constructing a GPU sketch ({make}) did not raise GpuUnavailableError")
    print(message)


class TwinChecks:
    """The checks every GPU-twin test module runs; a subclass sets ``script`` (the module's
    ``__file__``), ``cases`` (names) and ``run_case`` (a staticmethod: name -> "" or a difference)."""

    script: str = ""
    cases: list = []
    slow_cases: list = []  #: of ``cases``: run only with the slow tests

    @classmethod
    def fast_cases(cls) -> list:
        return [c for c in cls.cases if c not in cls.slow_cases]

    @pytest.fixture(scope="class")
    @classmethod
    def simulator_verdict(cls) -> dict:
        return simulator_verdict(cls.script, cls.fast_cases())

    @pytest.fixture(scope="class")
    @classmethod
    def simulator_verdict_slow(cls) -> dict:
        return simulator_verdict(cls.script, cls.slow_cases)

    def test_simulator_matches_cpu(self, simulator_verdict, case):
        assert simulator_verdict[case]["ok"], simulator_verdict[case]["detail"]

    @pytest.mark.slow
    def test_simulator_matches_cpu_slow(self, simulator_verdict_slow, slow_case):
        assert simulator_verdict_slow[slow_case]["ok"], simulator_verdict_slow[slow_case]["detail"]

    @pytest.mark.slow  # one subprocess per module; tests/test_gpu_selection.py covers every class in one
    def test_clear_error_without_device_or_simulator(self):
        assert_clear_error_without_device(self.script)

    @needs_device
    def test_in_process_matches_cpu(self, case):
        detail = self.run_case(case)
        assert not detail, detail


def pytest_generate_tests(metafunc):
    """Parametrize :class:`TwinChecks`' ``case`` argument by the subclass's ``cases``."""
    cls = metafunc.cls
    if cls is None or not issubclass(cls, TwinChecks):
        return
    if "case" in metafunc.fixturenames:
        cases = cls.fast_cases() if metafunc.function.__name__ == "test_simulator_matches_cpu" else cls.cases
        metafunc.parametrize("case", cases)
    if "slow_case" in metafunc.fixturenames:
        metafunc.parametrize("slow_case", cls.slow_cases)
