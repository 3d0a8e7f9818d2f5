"""Choosing the device: ``device = "cpu" | "gpu"`` per sketch and service-wide, ``serve --device``,
``analyze --device``; the clear errors without a GPU or without the ``[gpu]`` extra (never a silent
fall-back); ``/metrics``, ``/api/v1/stats`` and the report say where each sketch runs.

The GPU runs here use Numba's CUDA simulator in subprocesses (``NUMBA_ENABLE_CUDASIM=1`` must be set
before ``numba.cuda`` is imported); "no device" is ``NUMBA_DISABLE_CUDA=1``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from telesketch.service.config import ConfigError, load_config
from telesketch.service.sketchset import configure
from telesketch.traces import generate_capture

pytestmark = pytest.mark.gpu

REPO = Path(__file__).resolve().parents[1]
NO_DEVICE = {"NUMBA_ENABLE_CUDASIM": "0", "NUMBA_DISABLE_CUDA": "1"}
SIMULATOR = {"NUMBA_ENABLE_CUDASIM": "1"}

# Two GPU-capable sketches and one without a GPU twin (stays on the CPU under a service-wide "gpu").
CONFIG = """
[sketches.gaps]
kind = "gapfilter_ao"
memory_bytes = 4096
[sketches.hhh]
kind = "residualsketch"
mode = "byte"
memory_bytes = 4096
phi = 0.01
expected_packets = 2000
[sketches.truth]
kind = "exact"
"""


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """``(capture, config)``: a 1500-packet pcap and a TOML config of the sketches above."""
    d = tmp_path_factory.mktemp("gpusel")
    capture = d / "small.pcap"
    generate_capture(capture, packets=1500, flows=40, seed=5, duration_s=4.0)
    config = d / "sketches.toml"
    config.write_text(CONFIG)
    return capture, config


def _cli(args: list, env_extra: dict, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_extra, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "telesketch.cli", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _python_lines(code: str, env_extra: dict, *args, timeout: float = 240, stderr_tail: int = 3000) -> list[str]:
    """Run ``python -c code *args`` with ``env_extra`` (the repository on the path); assert it exits 0
    (showing the last ``stderr_tail`` characters of its stderr otherwise); its stdout lines."""
    env = {**os.environ, **env_extra, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-stderr_tail:]
    return proc.stdout.splitlines()


# ---------------------------------------------------------------------------- configuration
def test_device_values_are_checked():
    with pytest.raises(ConfigError, match="device must be one of"):
        load_config(None, {"device": "tpu"})
    cfg = load_config(None)
    cfg.sketches = {"g": {"kind": "gapfilter_ao", "device": "fpga"}}
    with pytest.raises(ConfigError, match="sketch 'g': device must be one of"):
        cfg.validate()


def test_gpu_with_shards_is_refused():
    with pytest.raises(ConfigError, match="shards > 1"):
        load_config(None, {"device": "gpu", "shards": 2})


def test_kind_without_gpu_twin_on_gpu_is_an_error():
    with pytest.raises(ConfigError, match="'exact' has no GPU implementation"):
        configure({"t": {"kind": "exact", "device": "gpu"}})


def test_service_wide_gpu_leaves_kinds_without_twin_on_cpu():
    (cs,) = configure({"t": {"kind": "exact"}}, device="gpu")
    assert cs.active and cs.device == "cpu" and cs.backend == "numpy"


def test_gpu_update_on_a_cpu_sketch_is_an_error():
    spec = {"hhh": {"kind": "residualsketch", "threshold": 10, "gpu_update": "batched"}}
    with pytest.raises(ConfigError, match="gpu_update = 'batched' applies to device = \"gpu\" only"):
        configure(spec, "cpu")


def test_gpu_update_batched_from_the_config_on_the_gpu():
    """``gpu_update = "batched"`` reaches the GPU twin through the config, survives the probe's
    to_bytes/from_bytes (a load parameter) and a successor epoch; a bad value is a clear error."""
    code = (
        "from telesketch.service.sketchset import configure\n"
        "from telesketch.service.config import ConfigError\n"
        "cs = configure({'hhh': {'kind': 'residualsketch', 'device': 'gpu', 'threshold': 10,"
        " 'gpu_update': 'batched'}})[0]\n"
        "s = cs.load(cs.build().to_bytes())\n"
        "print(cs.device, cs.build().gpu_update, s.gpu_update, cs.empty_state(False).gpu_update)\n"
        "try:\n"
        "    configure({'hhh': {'kind': 'residualsketch', 'device': 'gpu', 'threshold': 10, 'gpu_update': 'x'}})\n"
        "except ConfigError as exc:\n"
        "    print('error:', exc)\n")
    lines = _python_lines(code, SIMULATOR)
    assert lines[0] == "gpu batched batched batched"
    assert "gpu_update must be one of ['exact', 'batched']" in lines[1]


def test_cpu_is_the_default():
    sketches = configure({"g": {"kind": "gapfilter_ao", "memory_bytes": 4096}})
    assert [(c.device, c.backend) for c in sketches] == [("cpu", "numpy")]


# ---------------------------------------------------------------------------- clear errors
def test_analyze_gpu_without_device_is_a_clear_error(small):
    capture, config = small
    proc = _cli(["analyze", "--device", "gpu", "--config", config, capture], NO_DEVICE)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr
    assert "sketch 'gaps' (gapfilter_ao) on device gpu: no usable GPU" in err, err[-2000:]
    assert "pip install 'telesketch[gpu]'" in err and "report" not in proc.stdout


@pytest.mark.slow  # ~10 s of subprocesses; the same refusal as test_analyze_gpu_without_device_is_a_clear_error
def test_per_sketch_gpu_without_device_is_a_clear_error(small, tmp_path):
    capture, _ = small
    config = tmp_path / "one.toml"
    config.write_text('[sketches.hhh]\nkind = "residualsketch"\ndevice = "gpu"\nmemory_bytes = 4096\n')
    proc = _cli(["analyze", "--config", config, capture], NO_DEVICE)
    assert proc.returncode == 2 and "sketch 'hhh' (residualsketch) on device gpu: no usable GPU" in proc.stderr


def test_serve_gpu_without_gpu_extra_is_a_clear_error(small, tmp_path):
    """``numba.cuda`` missing (no ``[gpu]`` extra): the error names the extra; nothing is served."""
    _, config = small
    blocker = ("import sys, importlib.abc\n"
               "class Block(importlib.abc.MetaPathFinder):\n"
               "    def find_spec(self, name, path=None, target=None):\n"
               "        if name == 'numba.cuda' or name.startswith('numba.cuda.') or name.startswith('numba_cuda'):\n"
               "            raise ImportError(f'No module named {name!r} (blocked by the test)')\n"
               "sys.meta_path.insert(0, Block())\n"
               "from telesketch.cli import main\n"
               "sys.exit(main(sys.argv[1:]))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", blocker, "serve", "--device", "gpu", "--config", str(config),
                           "--grpc-address", "127.0.0.1:0", "--http-address", "", "--data-dir", str(tmp_path / "d")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "GPU support does not import" in proc.stderr and "pip install 'telesketch[gpu]'" in proc.stderr
    assert "serving" not in proc.stdout


def test_every_gpu_class_without_device_names_both_ways_out():
    """Constructing any GPU twin with neither a device nor the simulator raises
    GpuUnavailableError naming the [gpu] extra and the simulator (one subprocess for all)."""
    probe = ("from telesketch import gpu\n"
             "makers = [lambda: gpu.GapFilterSO(memory_bytes=1024), lambda: gpu.GapFilterAO(memory_bytes=1024),\n"
             "          lambda: gpu.HiddenSketch(memory_bytes=8192, phi=1e-3), lambda: gpu.ResidualSketch(threshold=10),\n"
             "          lambda: gpu.CocoSketch(), lambda: gpu.LLMSketch(memory_bytes=4096)]\n"
             "for make in makers:\n"
             "    try:\n"
             "        make()\n"
             "    except gpu.GpuUnavailableError as exc:\n"
             "        print(exc)\n")
    lines = _python_lines(probe, NO_DEVICE, timeout=120, stderr_tail=2000)
    assert len(lines) == 6, lines
    assert all("pip install 'telesketch[gpu]'" in m and "NUMBA_ENABLE_CUDASIM=1" in m for m in lines), lines


# ---------------------------------------------------------------------------- on the (simulated) GPU
def test_analyze_on_gpu_equals_cpu_and_says_where(small):
    """The same report on the GPU (simulator) as on the CPU; the report names each sketch's device."""
    capture, config = small
    reports = {}
    for device in ("cpu", "gpu"):
        proc = _cli(["analyze", "--device", device, "--config", config, "--json", capture], SIMULATOR)
        assert proc.returncode == 0, proc.stderr[-3000:]
        reports[device] = json.loads(proc.stdout)
    where = {d: {s["name"]: (s["device"], s["backend"]) for s in r["sketches"]} for d, r in reports.items()}
    assert where["cpu"] == {"gaps": ("cpu", "numpy"), "hhh": ("cpu", "numpy"), "truth": ("cpu", "numpy")}
    assert where["gpu"] == {"gaps": ("gpu", "simulator"), "hhh": ("gpu", "simulator"), "truth": ("cpu", "numpy")}
    from telesketch.report import render_text

    assert "gaps (gapfilter_ao, 4.0 KiB, on GPU (simulator))" in render_text(reports["gpu"])
    for r in reports.values():
        for s in r["sketches"]:
            s.pop("device"), s.pop("backend")
        r.pop("ingest")
    assert reports["gpu"]["hhh"]["rows"], "the comparison needs some HHH rows"
    assert reports["gpu"] == reports["cpu"]


def test_serve_device_gpu_metrics_and_stats_say_where(small, tmp_path):
    """``serve --device gpu`` (simulator): /metrics and /api/v1/stats name each sketch's device."""
    _, config = small
    env = {**os.environ, **SIMULATOR, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "telesketch.cli", "serve", "--device", "gpu", "--config", str(config),
                             "--grpc-address", "127.0.0.1:0", "--http-address", "127.0.0.1:0",
                             "--data-dir", str(tmp_path / "data"), "--log-level", "warning"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("telesketch serving"), (line, proc.stderr.read() if proc.poll() is not None else "")
        http = int(line.split("http=")[1])
        base = f"http://127.0.0.1:{http}"
        metrics = urllib.request.urlopen(f"{base}/metrics", timeout=30).read().decode()
        stats = json.loads(urllib.request.urlopen(f"{base}/api/v1/stats", timeout=30).read())
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert 'telesketch_sketch_device{backend="simulator",device="gpu",sketch="gaps"} 1.0' in metrics, metrics
    assert 'telesketch_sketch_device{backend="simulator",device="gpu",sketch="hhh"} 1.0' in metrics
    assert 'telesketch_sketch_device{backend="numpy",device="cpu",sketch="truth"} 1.0' in metrics
    where = {s["name"]: (s["device"], s["backend"]) for s in stats["sketches"]}
    assert where == {"gaps": ("gpu", "simulator"), "hhh": ("gpu", "simulator"), "truth": ("cpu", "numpy")}


def test_per_sketch_cpu_key_works_everywhere_the_spec_goes(small, tmp_path):
    """A ``device = "cpu"`` key in a sketch table is not a sketch parameter: the truth sketch, the
    memory sweep and the sharded spec builders leave it out (no TypeError)."""
    from telesketch.analyze import _configured_memory, analyze
    from telesketch.distributed.cluster import _build_for_specs
    from telesketch.report import truth_specs

    capture, _ = small
    config = tmp_path / "cpu.toml"
    config.write_text('[sketches.hhh]\nkind = "residualsketch"\ndevice = "cpu"\nmode = "byte"\n'
                      'memory_bytes = 4096\nphi = 0.01\nexpected_packets = 2000\n'
                      '[sketches.gaps]\nkind = "gapfilter_so"\ndevice = "cpu"\n')
    cfg = load_config(config)
    report, _ = analyze([capture], cfg, truth=True)
    assert [(s["name"], s["device"]) for s in report["sketches"]] == [("hhh", "cpu"), ("gaps", "cpu")]
    assert report["truth"] and truth_specs(cfg.sketches)
    assert _configured_memory(cfg.sketches["gaps"]) > 0
    assert _build_for_specs("hhh", cfg.sketches["hhh"]).params.memory_bytes == 4096


REPLAY_SCRIPT = """
import json, sys
from telesketch.analyze import analyze
from telesketch.client import Client
from telesketch.replay import ReplayOptions, replay
from telesketch.report import SECTIONS, RemoteSource, ReportOptions, build_report
from telesketch.service.config import load_config
from telesketch.service.server import ServiceThread

capture, config_path = sys.argv[1], sys.argv[2]
overrides = {"grpc_address": "127.0.0.1:0", "http_address": "", "data_dir": "", "device": "gpu"}
config = load_config(config_path, overrides)
opts = ReportOptions()
local, _ = analyze([capture], load_config(config_path, dict(overrides, device="cpu")), opts, batch_size=500)
with ServiceThread(config) as svc:
    target = f"127.0.0.1:{svc.grpc_port}"
    summary = replay([capture], ReplayOptions(target, batch_size=500, keep_timestamps=True))
    with Client(target) as client:
        remote = build_report(RemoteSource(client), opts, mode="service", files=[capture])
    where = {s["name"]: s["device"] for s in svc.service.stats()["sketches"]}
answers = lambda r: {name: r[name] for name in SECTIONS}
print(json.dumps({"acked": summary.packets_acked, "error": summary.error, "where": where,
                  "same": answers(remote) == answers(local), "hhh_rows": len(local["hhh"]["rows"]),
                  "local": answers(local), "remote": answers(remote)}))
"""


def test_service_on_gpu_answers_as_analyze_on_cpu(small):
    """Replayed over gRPC into ``device = "gpu"`` sketches (simulator), the service answers every
    query exactly as ``analyze`` does on the CPU: the GPU twins in the real ingest path."""
    capture, config = small
    out = json.loads(_python_lines(REPLAY_SCRIPT, SIMULATOR, capture, config, timeout=300)[-1])
    assert out["error"] is None and out["acked"] == 1500
    assert out["where"] == {"gaps": "gpu", "hhh": "gpu", "truth": "cpu"}
    assert out["hhh_rows"] > 0
    assert out["same"], (out["local"], out["remote"])
