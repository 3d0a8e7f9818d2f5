"""``telesketch summary`` on a capture of both families: IPv6 sources and flows by their own
addresses (RFC 5952 text), never folded into ``0.0.0.0``; checked against the exact counts of the
rows the reader yields."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from telesketch.cli import main
from telesketch.packets import PacketBatch, format_ipv4, format_ipv6
from telesketch.summary import PROTO_NAMES
from telesketch.traces import generate_capture, read_capture


@pytest.fixture(scope="module")
def mixed_capture(tmp_path_factory):
    path = tmp_path_factory.mktemp("summary") / "mixed.pcap"
    stats = generate_capture(path, packets=3000, flows=150, seed=5, ipv6_share=0.4)
    assert 0 < stats.ipv6_packets < stats.packets
    return path, PacketBatch.concat(read_capture(path))


def exact_counts(batch: PacketBatch) -> tuple[Counter, Counter]:
    """(packets per source text, packets per ``(src, dst, sport, dport, proto)`` text tuple)."""
    sources, flows = Counter(), Counter()
    for i in range(len(batch)):
        if batch.ipv6[i]:
            src, dst = format_ipv6(bytes(batch.src_ip6[i])), format_ipv6(bytes(batch.dst_ip6[i]))
        else:
            src, dst = format_ipv4(int(batch.src_ip[i])), format_ipv4(int(batch.dst_ip[i]))
        sources[src] += 1
        flows[src, dst, int(batch.src_port[i]), int(batch.dst_port[i]), int(batch.proto[i])] += 1
    return sources, flows


def test_summary_json_counts_ipv6_sources_and_flows_exactly(mixed_capture, capsys):
    path, batch = mixed_capture
    sources, flows = exact_counts(batch)
    assert main(["summary", str(path), "--json", "--top", "100000"]) == 0
    (summary,) = json.loads(capsys.readouterr().out)
    assert summary["packets"] == len(batch)
    assert summary["sources"] == len(sources) and summary["flows"] == len(flows)
    assert {r["src"]: r["packets"] for r in summary["top_sources"]} == sources
    got = {(r["src"], r["dst"], r["src_port"], r["dst_port"], r["proto"]): r["packets"] for r in summary["top_flows"]}
    assert got == {(s, d, sp, dp, PROTO_NAMES.get(p, str(p))): c for (s, d, sp, dp, p), c in flows.items()}
    assert any(":" in r["src"] for r in summary["top_sources"])  # IPv6 sources are listed as such
    assert "0.0.0.0" not in sources and all(r["src"] != "0.0.0.0" for r in summary["top_sources"])


def test_summary_text_brackets_ipv6_flow_endpoints(mixed_capture, capsys):
    path, batch = mixed_capture
    sources, flows = exact_counts(batch)
    assert main(["summary", str(path), "--top", "100000"]) == 0
    text = capsys.readouterr().out
    assert "0.0.0.0" not in text
    src6 = next(s for s in sources if ":" in s)
    assert f"  {src6:<15} {sources[src6]:>10,} pkts" in text
    (s, d, sp, dp, _), count = next((k, c) for k, c in flows.items() if ":" in k[0])
    assert f"  [{s}]:{sp} -> [{d}]:{dp} " in text and f"  {count:,} pkts" in text
    assert np.count_nonzero(batch.ipv6) > 0
