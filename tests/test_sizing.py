"""``telesketch size`` (issue 20): the memory it advises is the one a brute-force sweep picks."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from telesketch.sizing import SizingAdvice, pick_memory, render
from telesketch.sketches import exact
from telesketch.sketches.hiddensketch import HiddenSketch
from telesketch.traces import generate_capture, read_capture

PHI = 1e-3
CONFIGURED = 40960
FACTORS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.8, 0.9, 1.0, 1.5, 2.0)
CONFIG = f"""[server]
epoch_seconds = 3600.0
[sketches.hh]
kind = "hiddensketch"
memory_bytes = {CONFIGURED}
phi = {PHI}
expected_epoch_items = 200000
"""


def brute_force(path, target: float) -> tuple[int | None, dict]:
    """Every memory point by hand: a Hidden Sketch per point, fed the capture, scored against exact."""
    batches = list(read_capture(path))
    src = np.concatenate([np.asarray(b.src_ip) for b in batches])
    true = exact.heavy_hitters(src, phi=PHI)
    f1 = {}
    for factor in FACTORS:
        sketch = HiddenSketch(memory_bytes=int(CONFIGURED * factor), phi=PHI, expected_epoch_items=200_000)
        for b in batches:
            sketch.update(b)
        reported = {k: v for k, v in sketch.heavy_hitters() if v > PHI * len(src)}
        f1[sketch.memory_bytes] = exact.set_accuracy(true, reported).f1
    return pick_memory([{"memory_bytes": m, "f1": v} for m, v in f1.items()], target), f1


def test_size_picks_what_a_brute_force_sweep_picks(tmp_path):
    capture = tmp_path / "hard.pcap"
    generate_capture(capture, packets=200_000, flows=12_000, zipf=1.0, seed=4, mix="hard")
    config = tmp_path / "hh.toml"
    config.write_text(CONFIG)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])))
    run = subprocess.run([sys.executable, "-m", "telesketch.cli", "size", str(capture), "--config", str(config),
                          "--factors", ",".join(map(str, FACTORS)), "--target", "0.95", "--json"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    (advice,) = json.loads(run.stdout)
    want, f1 = brute_force(capture, 0.95)
    assert advice["sketch"] == "hh" and advice["configured_bytes"] == CONFIGURED
    assert {p["memory_bytes"]: p["f1"] for p in advice["points"]} == pytest.approx(f1)
    assert advice["memory_bytes"] == want
    assert want is not None and want != min(f1)  # the capture needs more than the smallest point: a real choice


def test_size_cli_errors_and_no_target_reached(tmp_path):
    from telesketch.cli import main

    assert main(["size", str(tmp_path / "missing.pcap")]) == 2
    with pytest.raises(SystemExit):
        main(["size", "x.pcap", "--factors", "1,-2"])
    a = SizingAdvice("hh", "hiddensketch", "heavy_hitters", 0.99, 1000, None,
                     [{"memory_bytes": 1000, "f1": 0.5, "precision": 0.4, "recall": 1.0}])
    assert "no memory on the grid reaches F1 0.99" in render([a]) and "larger grid" in render([a])
    flat = SizingAdvice("hh", "hiddensketch", "heavy_hitters", 0.95, 1000, None,
                        [{"memory_bytes": m, "f1": 0.25, "precision": 1.0, "recall": 0.14} for m in (1000, 2000, 4000)])
    assert "does not change with memory" in render([flat])


def test_size_layout_names_each_residual_point_and_overrides_the_config(tmp_path):
    """``--layout`` (issue 20): every ResidualSketch point carries the layout it ran with; ``tuned`` picks
    :func:`choose_layout`'s at each memory (here both it returns), ``paper`` the spec's everywhere."""
    from telesketch.cli import main
    from telesketch.service.config import load_config
    from telesketch.sizing import size_sketches
    from telesketch.sketches.residual_layout import choose_layout

    capture = tmp_path / "hard.pcap"
    generate_capture(capture, packets=20_000, flows=3_000, zipf=1.0, seed=2, mix="hard")
    config = tmp_path / "hhh.toml"
    config.write_text('[server]\nepoch_seconds = 3600.0\n[sketches.hhh]\nkind = "residualsketch"\n'
                      'memory_bytes = 8192\nphi = 5e-4\nexpected_packets = 400000\n')
    factors = (0.125, 1.0, 16.0)  # r = buckets x phi = 0.06, 0.51, 8.19 (128 KiB): flat, flat, 16-24 (rule 6)
    layouts = {}
    for layout in ("tuned", "paper"):
        (advice,) = size_sketches([str(capture)], load_config(str(config)), factors=factors, layout=layout)
        layouts[layout] = [p["layout"] for p in advice.points]
        if layout == "tuned":  # memory_bytes charged includes the IPv6 tree: the IPv4 tree had 8192 x factor
            assert layouts[layout] == [choose_layout(int(8192 * f), 200, "byte", 400_000).name for f in factors]
    assert layouts == {"tuned": ["flat", "flat", "16-24"], "paper": ["paper"] * 3}
    assert "16-24" in render([advice]) or "paper" in render([advice])
    with pytest.raises(SystemExit):
        main(["size", str(capture), "--layout", "best"])
