"""The gap answer carries the structured event rows from the sketch to the presenter, once.

No key is packed to bytes and unpacked again on the way to text: the presenter reads the rows'
fields; the wire key is 13 bytes for an IPv4 flow and 37 for an IPv6 one (it was 13 zero-address
bytes for IPv6 events before)."""
from __future__ import annotations

import json
import urllib.request

import numpy as np

from telesketch.client import Client
from telesketch.packets import PacketBatch, format_key
from telesketch.presenter import format_flow, gap_rows
from telesketch.service.config import ServiceConfig
from telesketch.service.queries import GAP_ROW_DTYPE, _gap_rows
from telesketch.service.server import ServiceThread
from telesketch.sketches.gapfilter import GAP_EVENT_DTYPE, GAP_EVENT_DTYPE_V1, GapFilterSO, event_flow_keys
from test_gapfilter_ipv6 import mixed_flows

EPOCH_S = 1_700_000_000


def _events() -> np.ndarray:
    sketch = GapFilterSO(64 * 1024, seq_field="tcp_seq")
    sketch.update(mixed_flows(3000, seed=5))
    events = sketch.gap_events()
    assert events.dtype == GAP_EVENT_DTYPE and 0 < events["ipv6"].sum() < len(events)
    return events


def test_rows_keep_every_epoch_in_time_order_and_the_newest_limit():
    events = _events()
    old = np.zeros(3, GAP_EVENT_DTYPE_V1)  # a layout-1 epoch (IPv4 only) from an older snapshot
    old["ts_ns"], old["src_ip"], old["jump"] = [5, 10**9, 7], [1, 2, 3], [11, 12, 13]
    rows = _gap_rows([(4, events), (3, old)], 0)
    assert rows.dtype == GAP_ROW_DTYPE and len(rows) == len(events) + 3
    assert (np.diff(rows["ts_ns"].astype(np.int64)) >= 0).all()
    assert sorted(rows["epoch"].tolist()) == sorted([4] * len(events) + [3] * 3)
    assert not rows[rows["epoch"] == 3]["ipv6"].any()
    np.testing.assert_array_equal(_gap_rows([(4, events), (3, old)], 5), rows[-5:])
    assert len(_gap_rows([], 0)) == 0


def test_presenter_reads_the_fields_both_families():
    events = _events()
    rows = _gap_rows([(9, events)], 0)
    out = gap_rows(rows)
    keys = event_flow_keys(rows)
    assert [r["key"] for r in out] == keys
    for row, event in zip(out, rows):
        assert len(row["key"]) == (37 if event["ipv6"] else 13)
        assert row["text"] == format_key(row["key"])  # the same text as any other key's
        if not event["ipv6"]:
            assert row["text"] == format_flow(row["key"])
        else:
            assert row["text"].startswith("[2001:db8:")
        assert (row["ts_ns"], row["jump"], row["epoch"]) == (int(event["ts_ns"]), int(event["jump"]), 9)


def test_grpc_and_http_gaps_answer_ipv6_flows(tmp_path):
    batch = mixed_flows(3000, seed=5)
    batch = PacketBatch.from_columns(**{**batch.columns(), "ts_ns": batch.ts_ns + np.uint64(EPOCH_S * 10**9)})
    spec = {"kind": "gapfilter_so", "memory_bytes": 64 * 1024, "seq_field": "tcp_seq"}
    cfg = ServiceConfig(grpc_address="127.0.0.1:0", http_address="127.0.0.1:0", data_dir=str(tmp_path / "d"),
                        epoch_seconds=1.0, sketches={"gaps": spec})
    offline = GapFilterSO(64 * 1024, seq_field="tcp_seq")
    offline.update(batch)
    want = gap_rows(_gap_rows([(EPOCH_S, offline.gap_events())], 0))
    svc = ServiceThread(cfg).start()
    try:
        with Client(f"127.0.0.1:{svc.grpc_port}", sender_id="g") as client:
            assert client.push_one(batch).applied_packets == len(batch)
            got = client.flow_gaps(epoch=EPOCH_S, sketch="gaps")
        assert [(g.ts_ns, g.key, g.jump, g.epoch) for g in got] == [(r["ts_ns"], r["key"], r["jump"], r["epoch"])
                                                                    for r in want]
        assert {len(g.key) for g in got} == {13, 37}
        url = f"http://127.0.0.1:{svc.http_port}/api/v1/gaps?epoch={EPOCH_S}&sketch=gaps&limit=0"
        with urllib.request.urlopen(url, timeout=10) as reply:
            body = json.load(reply)
        assert [r["flow"] for r in body] == [r["text"] for r in want]
    finally:
        svc.stop()
