"""The glue (service, Ray front end) asks per-kind hooks and Kind records, never a kind's name or its
parameters (issue 15; the review-debt items that moved ResidualSketch's ``layout = "tuned"`` and the
GPU-only settings out of shared code)."""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from telesketch.service.sketchset import KINDS
from telesketch.sketches.core import Sketch

ROOT = Path(__file__).resolve().parents[1] / "telesketch"
GLUE = sorted([*ROOT.joinpath("service").glob("*.py"), *ROOT.joinpath("distributed").glob("*.py")])


def _code(path: Path) -> str:
    """``path``'s source without comments and docstrings' prose lines (good enough for a literal scan)."""
    return "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())


@pytest.mark.parametrize("path", GLUE, ids=lambda p: p.name)
def test_glue_compares_no_kind_name(path):
    names = "|".join(re.escape(k) for k in KINDS)
    hits = re.findall(rf"""(?:==|!=|\bin\s*[(\[{{])\s*["'](?:{names})["']""", _code(path))
    assert hits == [], f"{path.name} dispatches on a kind name: {hits}"


@pytest.mark.parametrize("path", GLUE, ids=lambda p: p.name)
def test_glue_names_no_per_kind_setting(path):
    """``layout`` (ResidualSketch's tuned layout) and ``gpu_update`` / ``batched_chunk`` (its GPU twin's
    update) are facts of one kind: shared code reaches them through a hook or a Kind record field."""
    code = _code(path)
    if path.name == "sketchset.py":  # the Kind registry is where a kind states its settings: scan the rest
        from telesketch.service import sketchset

        code = "\n".join(inspect.getsource(obj) for obj in (sketchset.configure, sketchset._configure_gpu,
                                                              sketchset.ConfiguredSketch, sketchset.SketchSet))
    for word in ('"tuned"', '"layout"', '"gpu_update"', '"batched_chunk"'):
        assert word not in code, f"{path.name} names {word}"


@pytest.mark.parametrize("key,value", [("gpu_update", "batched"), ("batched_chunk", 4096)])
def test_gpu_only_settings_on_the_cpu_are_refused(key, value):
    """``Kind.gpu_params``: each of them on a CPU sketch is a ConfigError with the one text."""
    from telesketch.service.config import ConfigError
    from telesketch.service.sketchset import configure

    assert key in KINDS["residualsketch"].gpu_params
    with pytest.raises(ConfigError, match=re.escape(f"sketch 'hhh' (residualsketch): {key} = {value!r} applies to "
                                                    f"device = \"gpu\" only, and this sketch runs on the CPU")):
        configure({"hhh": {"kind": "residualsketch", "threshold": 10, key: value}}, "cpu")


def test_gpu_only_setting_error_names_no_update_mode():
    """The refusal is one text for every kind and key; it said "this sketch runs on the CPU (exact
    update)", ResidualSketch's wording, and misleading beside ``gpu_update = 'exact'`` itself (the
    GPU twin's exact mode, which the CPU sketch does not take either)."""
    from telesketch.service.config import ConfigError
    from telesketch.service.sketchset import configure

    with pytest.raises(ConfigError) as caught:
        configure({"hhh": {"kind": "residualsketch", "threshold": 10, "gpu_update": "exact"}}, "cpu")
    assert str(caught.value) == ("sketch 'hhh' (residualsketch): gpu_update = 'exact' applies to device = \"gpu\" "
                                 "only, and this sketch runs on the CPU; remove it or set device = \"gpu\"")


def test_gpu_only_settings_belong_to_kinds_with_a_twin():
    for name, kind in KINDS.items():
        if kind.gpu_params:
            assert kind.gpu_cls, name
            assert set(kind.gpu_params) <= set(kind.load_params), name  # a GPU snapshot reloads in its mode


def test_shard_params_default_keeps_the_config():
    params = {"kind": "x", "threshold": 3}
    assert Sketch.shard_params(object.__new__(Sketch), params) == params


def test_residualsketch_shard_params_pin_tuned_only():
    from telesketch.sketches.residualsketch import ResidualSketch

    tuned = {"memory_bytes": 131072, "phi": 5e-4, "expected_packets": 4_000_000, "layout": "tuned"}  # rule 6: 16-24
    pinned = ResidualSketch(**tuned).shard_params({"kind": "residualsketch", **tuned})
    assert pinned["layout"] == "paper" and pinned["crucial_layers"] == (16, 24)
    assert pinned["split"] == (0.5, 0.25, 0.25) and pinned["kind"] == "residualsketch"
    assert tuned["layout"] == "tuned"  # the caller's dict is not changed
    paper = {"memory_bytes": 32768, "threshold": 100}
    assert ResidualSketch(**paper).shard_params(paper) is paper
