"""Issue 17 obs. 6: LLM-Sketch's flow-size task names its heavy flows' 5-tuples (``keep_keys``)."""
from __future__ import annotations

from telesketch.client import Client
from telesketch.cli import main
from telesketch.service.config import DEFAULT_SKETCHES, load_config
from telesketch.service.server import ServiceThread
from telesketch.sketches.exact import count_dict
from telesketch.sketches.llmsketch import LLMSketch
from telesketch.traces import generate_batch


def _true_top(batch, k):
    sizes = count_dict(batch.flow_keys_void())
    top = sorted(sizes.items(), key=lambda kv: (-kv[1], bytes(kv[0])))[:k]
    return [(bytes(key), int(count)) for key, count in top]


def test_keep_keys_reports_the_5_tuples_of_the_heavy_part():
    batch = generate_batch(40_000, 400, seed=5, duration_s=5.0)
    named = LLMSketch(64 * 1024, "flow_size", "constant", keep_keys=True)
    plain = LLMSketch(64 * 1024, "flow_size", "constant")
    for part in batch.split(4096):
        named.update(part)
        plain.update(part)
    top = named.top_flows(10)
    assert all(isinstance(k, bytes) and len(k) == 13 for k, _ in top)
    assert top == _true_top(batch, 10)
    # the same counts as without names: naming changes nothing else
    assert [c for _, c in top] == [c for _, c in plain.top_flows(10)]
    assert named.memory_bytes == plain.memory_bytes + named.params.buckets * 8 * 13
    assert list(named.estimate_reported([k for k, _ in top])) == [c for _, c in top]
    again = LLMSketch.from_bytes(named.to_bytes())
    assert again.top_flows(10) == top and again.keep_keys
    assert named.successor().keep_keys


def test_service_default_top_flows_print_5_tuples(capsys):
    config = load_config(None, {"grpc_address": "127.0.0.1:0", "http_address": "", "data_dir": ""})
    config.sketches = {"flows": dict(DEFAULT_SKETCHES["flows"], estimator="constant")}
    assert DEFAULT_SKETCHES["flows"].get("keep_keys") is True
    batch = generate_batch(20_000, 200, seed=2, duration_s=2.0)
    with ServiceThread(config) as svc:
        target = f"127.0.0.1:{svc.grpc_port}"
        with Client(target, sender_id="t") as client:
            client.push_one(batch, 1)
        assert main(["query", "top-flows", "--target", target, "--k", "3"]) == 0
    out = capsys.readouterr().out
    assert "fp:0x" not in out and " > " in out and "proto" in out, out
