"""Operators see IPv6 everywhere: HTTP JSON, CLI tables and key arguments on mixed traffic.

A real service on loopback ingests 40 % IPv6 traffic; its answers must carry RFC 5952 text and a
``family`` column, and an IPv6 flow typed as text must name the same flow as its hex key.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest

from telesketch.cli import build_parser, main
from telesketch.client import Client
from telesketch.packets import format_key, parse_ipv6
from telesketch.presenter import key_family, key_text, parse_flow_key
from telesketch.service.server import ServiceThread
from telesketch.sketches import exact
from telesketch.traces.generate import generate_batch
from test_service import SKETCHES, config

START_S = 1_700_000_000.0


@pytest.fixture(scope="module")
def mixed():
    return generate_batch(20_000, 300, seed=3, duration_s=0.5, start_s=START_S, ipv6_share=0.4)


@pytest.fixture(scope="module")
def live(tmp_path_factory, mixed):
    # plus one IPv4-only sketch (LLM-Sketch's 13-byte heavy_hitters task): the service withholds IPv6 from it
    sketches = dict(SKETCHES, flows4={"kind": "llmsketch", "memory_bytes": 32 * 1024, "task": "heavy_hitters",
                                      "estimator": "constant"})
    svc = ServiceThread(config(tmp_path_factory.mktemp("v6"), epoch_seconds=10.0, sketches=sketches)).start()
    Client(f"127.0.0.1:{svc.grpc_port}", sender_id="v6").push([mixed])
    yield svc
    svc.stop()


def get(svc, path: str):
    with urllib.request.urlopen(f"http://127.0.0.1:{svc.http_port}{path}", timeout=30) as reply:
        return json.load(reply)


def test_heavy_hitters_json_carries_ipv6_text_and_family(live, mixed):
    rows = get(live, "/api/v1/heavy_hitters?sketch=hh&threshold=150")
    true = {key_text(k): v for k, v in exact.mixed_heavy_hitters(mixed, "src_ip", threshold=150).items()}
    assert {r["family"] for r in rows} == {4, 6}, rows
    for r in rows:
        if r["family"] == 6:
            assert ":" in r["key"] and parse_ipv6(r["key"]) and key_text(parse_ipv6(r["key"])) == r["key"]
    # the order is stable: largest first, ties IPv4 before IPv6
    order = [(-r["estimate"], r["family"]) for r in rows]
    assert order == sorted(order)
    # Hidden Sketch recovers IPv6 sources exactly: the same IPv6 heavy hitters as the exact count
    assert {r["key"] for r in rows if r["family"] == 6} == {k for k in true if ":" in k}


def test_flow_size_takes_flow_text_of_either_family(live, mixed):
    keys = mixed.flow_keys37()
    v4 = next(bytes(k) for k, six in zip(keys, mixed.ipv6) if not six)
    v4_text = format_key(v4)
    assert key_family(parse_flow_key(v4_text)) == 4 and len(parse_flow_key(v4_text)) == 13
    by_hex = get(live, "/api/v1/flow_size?key=" + parse_flow_key(v4_text).hex())
    by_text = get(live, "/api/v1/flow_size?key=" + urllib.parse.quote(v4_text))
    assert by_hex == by_text and by_text[0]["flow"] == v4_text and by_text[0]["family"] == 4
    with pytest.raises(urllib.error.HTTPError) as info:
        get(live, "/api/v1/flow_size?key=" + urllib.parse.quote("[2001:db8::zz]:1 > [::1]:2 udp"))
    assert info.value.code == 400 and "not an IPv6 address" in json.load(info.value)["error"]


def test_cli_key_argument_accepts_ipv6_flow_text():
    args = build_parser().parse_args(["query", "flow-size", "--key", "[2001:db8::1]:443 -> [2001:db8::2]:5353 udp",
                                      "--key", "10.0.0.1:1234 > 10.0.0.2:80 proto 6"])
    assert [len(k) for k in args.key] == [37, 13]
    assert key_text(args.key[0]) == "[2001:db8::1]:443 > [2001:db8::2]:5353 proto 17"


def test_cli_hhh_table_prints_both_trees(live, capsys):
    assert main(["query", "hhh", "--target", f"127.0.0.1:{live.grpc_port}", "--sketch", "hhh", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and {"family", "prefix", "discounted estimate"} <= set(rows[0])
    families = [r["family"] for r in rows]
    assert families == sorted(families)  # the IPv4 tree, then the IPv6 tree
    for r in rows:
        assert (":" in r["prefix"]) == (r["family"] == "IPv6")


def test_cli_heavy_hitters_table_prints_ipv6_text(live, capsys):
    assert main(["query", "heavy-hitters", "--target", f"127.0.0.1:{live.grpc_port}", "--sketch", "hh",
                 "--threshold", "150"]) == 0
    out = capsys.readouterr().out
    assert any(":" in line.split()[0] for line in out.splitlines()[2:] if line.strip()), out


def test_metrics_count_withheld_ipv6_and_gap_coverage(live, mixed):
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{live.http_port}/metrics", timeout=30) as reply:
        text = reply.read().decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    n6 = int(mixed.ipv6.sum())
    assert n6 > 0
    assert live.service.manager.sketchset.ipv6_withheld == {"flows4": n6}
    withheld = {dict(labels)["sketch"]: v for (name, labels), v in samples.items() if name == "telesketch_ipv6_withheld_total"}
    assert withheld == {"flows4": n6}
    # the default GapFilter keys on ip_id: every IPv4 packet inspected, every IPv6 one skipped
    covered = samples[("telesketch_gap_covered_packets_total", (("sketch", "gaps"),))]
    skipped = sum(v for (name, labels), v in samples.items()
                  if name == "telesketch_gap_skipped_packets_total" and ("sketch", "gaps") in labels)
    assert (covered, skipped) == (len(mixed) - n6, n6)


@pytest.fixture(scope="module")
def mixed_report(tmp_path_factory):
    from telesketch.analyze import analyze
    from telesketch.service.config import load_config
    from telesketch.traces import generate_capture

    path = tmp_path_factory.mktemp("report") / "mixed.pcap"
    generate_capture(path, packets=20_000, flows=300, seed=5, duration_s=4.0, ipv6_share=0.4)
    cfg = load_config(None, {"grpc_address": "127.0.0.1:0", "http_address": "", "data_dir": ""})
    cfg.sketches = {k: v for k, v in SKETCHES.items() if k != "exact"} | {
        "flows4": {"kind": "llmsketch", "memory_bytes": 32 * 1024, "task": "heavy_hitters", "estimator": "constant"}}
    report, run = analyze([path], cfg, truth=True, batch_size=4096)
    return report, run


def test_report_says_what_gap_detection_covered_and_what_was_withheld(mixed_report):
    from telesketch.report import render_text

    report, run = mixed_report
    n6 = sum(int(e.states["gaps"].coverage()["skipped_packets"].get("no_ip_id", 0)) for e in run.manager.epochs())
    assert n6 > 0
    ipv6 = report["ipv6"]
    assert ipv6["withheld"] == {"flows4": n6}
    cov = ipv6["gap_coverage"]["gaps"]
    assert cov["covered_packets"] + sum(cov["skipped_packets"].values()) == report["window"]["packets"]
    assert cov["skipped_packets"]["no_ip_id"] == n6
    text = render_text(report)
    assert f"flows4 {n6:,}" in text and "withheld from IPv4-only sketches" in text
    assert f"gap cover  gaps (window): {cov['covered_packets']:,} of {report['window']['packets']:,} packets" in text
    assert f"no_ip_id {n6:,}" in text


def test_report_heavy_hitters_of_both_families_match_the_truth(mixed_report):
    from telesketch.report import render_text

    report, _ = mixed_report
    rows = report["heavy_hitters"]["rows"]
    assert {r["family"] for r in rows} == {4, 6}
    for r in rows:
        assert r["text"] == key_text(bytes.fromhex(r["key"]) if isinstance(r["key"], str) else r["key"])
    truth = {r["key"]: r["estimate"] for r in report["truth"]["heavy_hitters"]["rows"]}
    six = {r["key"] for r in rows if r["family"] == 6}
    assert six == {k for k, r in zip(truth, report["truth"]["heavy_hitters"]["rows"]) if r["family"] == 6}
    assert report["accuracy"]["heavy_hitters"]["f1"] == 1.0
    text = render_text(report)
    six_text = [r["text"] for r in rows if r["family"] == 6]
    assert any(t in text for t in six_text)


def test_report_hhh_section_keeps_two_trees_in_text():
    from telesketch.report import render_text

    rows = [{"family": 4, "prefix": 0x0A000000, "length": 8, "text": "10.0.0.0/8", "estimate": 90.0},
            {"family": 6, "prefix": "20010db8" + "0" * 24, "length": 32, "text": "2001:db8::/32", "estimate": 70.0}]
    report = {"source": {"mode": "analyze", "files": ["x"], "target": None},
              "window": {"last": 1, "epochs": [0], "packets": 100, "epoch_seconds": 10.0},
              "ingest": {"packets": 100, "late_packets": 0, "batches": 1}, "sketches": [], "notes": [],
              "ipv6": {"scope": "window", "withheld": {}, "gap_coverage": {}}}
    for what in ("heavy_hitters", "heavy_changers", "gaps", "top_flows"):
        report[what] = {"error": "not configured"}
    report["hhh"] = {"sketch": "hhh", "combine": "single", "error": None, "phi": 0.01, "count": 2, "rows": rows}
    text = render_text(report)
    assert "IPv4 tree: 1 prefixes" in text and "IPv6 tree: 1 prefixes" in text
    assert text.index("10.0.0.0/8") < text.index("IPv6 tree") < text.index("2001:db8::/32")
    assert "every active sketch takes IPv6 packets" in text


def test_family_accuracy_checks_each_family_on_its_own():
    from telesketch.report import family_accuracy, family_lines

    v6 = "20010db8" + "0" * 23 + "1"
    rows = lambda keys: [{"key": k, "family": 6 if isinstance(k, str) else 4, "estimate": 1} for k in keys]  # noqa: E731
    report = {"heavy_hitters": {"error": None, "rows": rows([1, 2, v6])},
              "truth": {"heavy_hitters": {"error": None, "rows": rows([1, 3, v6, "ff" * 16])}}}
    by = family_accuracy(report)
    assert (by["4"]["heavy_hitters"]["tp"], by["4"]["heavy_hitters"]["fp"], by["4"]["heavy_hitters"]["fn"]) == (1, 1, 1)
    assert (by["6"]["heavy_hitters"]["tp"], by["6"]["heavy_hitters"]["fp"], by["6"]["heavy_hitters"]["fn"]) == (1, 0, 1)
    text = "\n".join(family_lines(by))
    assert "IPv4" in text and "IPv6" in text and "F1 0.667 (1/2 true, 0 false)" in text
    assert family_lines({"4": by["4"]}) == []  # IPv4-only traffic: no extra table


class _FakeQueries:
    """The query layer's answers in the forms the IPv6 query layer returns (issue 18): HHHRow rows
    of both families, 37-byte gap and flow keys, 16-byte heavy-hitter keys."""

    def __init__(self):
        from telesketch.sketches.cocosketch import HHHRow

        v6 = parse_ipv6
        self.flow6 = parse_flow_key("[2001:db8::1]:443 > [2001:db8::2]:5353 udp")
        self.hhh_rows = [HHHRow(4, bytes([10, 0, 0, 0]), 8, 90, 50), HHHRow(6, v6("2001:db8::"), 32, 80, 60),
                         HHHRow(6, v6("2001:db8:1::"), 48, 30, 30)]
        self.hitters = [(v6("2001:db8::1"), 40.0), (0x0A000001, 40.0), (0x0A000002, 70.0)]

    def _answer(self, rows, **extra):
        from telesketch.service.queries import Answer

        return Answer(rows, [0], 100, "fake", "single", extra=extra)

    def heavy_hitters(self, *args):
        return self._answer(self.hitters)

    def hhh(self, *args):
        return self._answer(self.hhh_rows)

    def gaps(self, window, sketch, limit, with_rows=True):
        """One IPv6 gap event as the engine returns it: a ``GAP_ROW_DTYPE`` structured array."""
        from telesketch.service.queries import GAP_ROW_DTYPE

        row = np.zeros(1, GAP_ROW_DTYPE)
        key = np.frombuffer(self.flow6, np.uint8)
        row["ts_ns"], row["jump"], row["epoch"], row["ipv6"] = 1_000_000_000, 7, 0, 1
        row["src_ip6"], row["dst_ip6"] = key[0:16], key[16:32]
        row["src_port"], row["dst_port"], row["proto"] = 443, 5353, 17
        return self._answer(row, per_epoch={0: 1})

    def top_flows(self, window, k, sketch):
        return self._answer([(self.flow6, 5.0)])

    def flow_size(self, window, keys, sketch):
        return self._answer([(k, 5.0) for k in keys])


class _FakeManager:
    import threading

    lock = threading.RLock()
    epoch_ns = 10_000_000_000

    def epochs(self):
        return []


class _FakeService:
    queries = _FakeQueries()
    manager = _FakeManager()


def test_http_json_renders_the_ipv6_query_layer_rows():
    from telesketch.service.http import ROUTES, Api

    api = Api(_FakeService())
    hitters = api.handle("/api/v1/heavy_hitters", {})
    assert [(r["key"], r["family"]) for r in hitters] == [("10.0.0.2", 4), ("10.0.0.1", 4), ("2001:db8::1", 6)]
    hhh = api.handle("/api/v1/hhh", {})
    assert [(r["family"], r["prefix"], r["parent"], r["depth"]) for r in hhh] == [
        (4, "10.0.0.0/8", "", 0), (6, "2001:db8::/32", "", 0), (6, "2001:db8:1::/48", "2001:db8::/32", 1)]
    json.dumps(hhh)  # JSON-able: the IPv6 value is hex text, not a 128-bit number
    gaps = api.handle("/api/v1/gaps", {})
    assert gaps[0]["flow"] == "[2001:db8::1]:443 > [2001:db8::2]:5353 proto 17" and gaps[0]["family"] == 6
    top = api.handle("/api/v1/top_flows", {})
    asked = api.handle("/api/v1/flow_size", {"key": ["[2001:db8::1]:443 > [2001:db8::2]:5353 udp"]})
    assert top == asked == [{"flow": gaps[0]["flow"], "family": 6, "estimate": 5.0}]
    for path, rows in (("/api/v1/heavy_hitters", hitters), ("/api/v1/hhh", hhh), ("/api/v1/gaps", gaps)):
        assert all(set(ROUTES[path]) <= set(r) for r in rows)
