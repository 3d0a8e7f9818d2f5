"""The per-kind configuration facts (telesketch/kinds_config.py) agree with the Kind registry and
with what the sketch classes themselves accept, and config validation applies them.

config.py checks these facts at load time without importing a sketch (no numba); these tests are
what keeps the data and the classes from drifting apart."""
from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from telesketch.kinds_config import BYTE_WEIGHTED_KINDS, KIND_CONFIG
from telesketch.service.config import ConfigError, ServiceConfig
from telesketch.service.sketchset import KINDS
from telesketch.sketches.core import SketchError

#: The smallest parameters each kind builds with (and without a ``weight`` key).
BASE_PARAMS = {
    "gapfilter_so": {"memory_bytes": 4096},
    "gapfilter_ao": {"memory_bytes": 4096},
    "gapfilter_straw": {"memory_bytes": 4096},
    "hiddensketch": {"memory_bytes": 56320},
    "residualsketch": {"memory_bytes": 8192, "threshold": 100},
    "llmsketch": {"memory_bytes": 8192},
    "exact": {},
}


def _cls(kind: str):
    k = KINDS[kind]
    return getattr(importlib.import_module(k.module), k.cls)


def _default_key(kind: str) -> str:
    return _cls(kind)(**BASE_PARAMS[kind]).params.key


def test_every_registered_kind_has_config_facts_and_no_others():
    assert set(KIND_CONFIG) == set(KINDS) == set(BASE_PARAMS)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_registry_routes_by_the_config_facts_route_key(kind):
    assert KINDS[kind].route_key == KIND_CONFIG[kind].route_key


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_byte_weighted_is_what_the_sketch_class_accepts(kind):
    cls = _cls(kind)
    cls(**BASE_PARAMS[kind])  # the base parameters are good, so a refusal below is the weight's
    if KIND_CONFIG[kind].byte_weighted:
        assert cls(**BASE_PARAMS[kind], weight="bytes").params.weight == "bytes"
    else:
        with pytest.raises(SketchError, match="weight"):
            cls(**BASE_PARAMS[kind], weight="bytes")


@pytest.mark.parametrize("kind", sorted(k for k in KIND_CONFIG if KIND_CONFIG[k].packets_only))
def test_packets_only_values_are_exactly_those_the_class_refuses_bytes_for(kind):
    cls = _cls(kind)
    module = importlib.import_module(KINDS[kind].module)
    for rule in KIND_CONFIG[kind].packets_only:
        allowed = getattr(module, rule.param.upper() + "S")  # the class's own list of values (llmsketch.TASKS)
        assert set(rule.values) <= set(allowed)
        assert getattr(cls(**BASE_PARAMS[kind]).params, rule.param) not in rule.values  # the default counts bytes
        for value in allowed:
            params = {**BASE_PARAMS[kind], rule.param: value, "weight": "bytes"}
            if value in rule.values:
                with pytest.raises(SketchError, match="bytes"):
                    cls(**params)
            else:
                cls(**params)


@pytest.mark.parametrize("kind", sorted(k for k in KIND_CONFIG if KIND_CONFIG[k].address_keys))
def test_address_keys_are_the_classes_keys_but_the_flow_key(kind):
    facts = KIND_CONFIG[kind]
    keys = importlib.import_module(KINDS[kind].module).KEYS
    assert facts.route_key in facts.address_keys
    assert set(facts.address_keys) <= set(keys)
    assert set(keys) - set(facts.address_keys) == {"5tuple"}  # routed by flow: every shard sees a key whole
    assert _default_key(kind) == facts.route_key  # a sketch without `key` is routed by its column


def test_byte_weighted_kinds_keep_their_message_order():
    assert BYTE_WEIGHTED_KINDS == ("residualsketch", "hiddensketch", "llmsketch", "exact")


@pytest.mark.parametrize("kind", sorted(k for k in KIND_CONFIG if KIND_CONFIG[k].address_keys))
def test_sharded_config_refuses_exactly_the_unroutable_keys(kind):
    facts = KIND_CONFIG[kind]
    keys = importlib.import_module(KINDS[kind].module).KEYS
    for key in keys:
        sketches = {"s": {"kind": kind, "key": key}}
        ServiceConfig(sketches=sketches).validate()  # unsharded: every key
        if key in facts.unroutable_keys:
            assert key != facts.route_key
            with pytest.raises(ConfigError, match=f"sketch 's': a {facts.title} keyed by {key} .*shards > 1"):
                ServiceConfig(shards=2, sketches=sketches).validate()
        else:
            ServiceConfig(shards=2, sketches=sketches).validate()


def test_loading_the_config_module_imports_no_sketch_and_no_numba():
    """The facts are read at config load without a sketch module (``--help``, ``query`` and config
    errors stay numba-free). ``validate()`` itself still imports ``service.epochs`` (numba) for
    ``DURABILITY_MODES``: that predates this module and is not checked here."""
    code = ("import sys; import telesketch.service.config, telesketch.kinds_config; "
            "bad = sorted(m for m in sys.modules if m == 'numba' or m.startswith(('telesketch.sketches', "
            "'telesketch.service.sketchset'))); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
