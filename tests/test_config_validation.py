"""Issue 17 obs. 5: a broken configuration refuses to start, naming what is wrong."""
from __future__ import annotations

import json

import pytest

from telesketch.cli import main
from telesketch.service import sketchset as ss
from telesketch.service.config import ConfigError, load_config


@pytest.mark.parametrize("address", ["127.0.0.1:99999", "127.0.0.1:65536", "[::1]:70000"])
@pytest.mark.parametrize("setting", ["grpc_address", "http_address"])
def test_ports_out_of_range_are_refused(setting, address):
    with pytest.raises(ConfigError, match=f"{setting} port must be in 0..65535"):
        load_config(None, {setting: address})


def test_port_zero_and_the_highest_port_are_accepted():
    config = load_config(None, {"grpc_address": "127.0.0.1:0", "http_address": "0.0.0.0:65535"})
    assert config.grpc_address.endswith(":0")


def test_a_missing_model_directory_refuses_to_start(tmp_path, capsys):
    missing = tmp_path / "no-model"
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"sketches": {"flows": {"kind": "llmsketch", "estimator": "tiny",
                                                      "estimator_path": str(missing)}}}))
    with pytest.raises(ConfigError, match=r"sketch 'flows'.*estimator_path .*no-model.* does not exist"):
        load_config(cfg)
    assert main(["serve", "--config", str(cfg), "--grpc-address", "127.0.0.1:0", "--http-address", ""]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_no_active_sketch_refuses_to_start(monkeypatch):
    monkeypatch.setitem(ss.KINDS, "unbuilt", ss.Kind("telesketch.no_such_module", "Nothing", frozenset({"gaps"})))
    with pytest.raises(ConfigError, match="no configured sketch is active.*'a' \\(unbuilt\\).*does not import"):
        ss.SketchSet.from_config({"a": {"kind": "unbuilt"}})
    # one usable sketch is enough: the other is skipped with its note, as before
    built = ss.SketchSet.from_config({"a": {"kind": "unbuilt"}, "gaps": {"kind": "gapfilter_ao"}})
    assert [cs.name for cs in built.active] == ["gaps"]


def test_destination_heavy_hitters_cannot_be_sharded_yet():
    with pytest.raises(ConfigError, match="sketch 'victims'.*dst_ip.*shards"):
        config = load_config(None, {"shards": 2})  # the defaults are fine
        config.sketches = {"victims": {"kind": "hiddensketch", "key": "dst_ip"}}
        config.validate()
