"""Counting by bytes (``weight = "bytes"``) as well as packets (issue 17).

A byte-weighted sketch adds each packet's ``length`` column (IPv4 total length, IPv6 payload length
+ 40) instead of 1. Checked per sketch against the naive model state for state (both address
families), against the exact weighted ground truth (``telesketch.sketches.exact`` with weights), for
counters past 32 bits, and that ``weight = "packets"`` (the default) leaves state and snapshots
byte-identical to a sketch built without the key.
"""
import json
import struct
from collections import Counter

import numpy as np
import pytest

import naive_hiddensketch as naive_hs
import naive_residualsketch as naive
from telesketch.sketches import exact
from telesketch.sketches.core import SketchError
from telesketch.sketches.hiddensketch import HiddenSketch
from telesketch.sketches.residualsketch import CocoSketch, ResidualSketch
from telesketch.traces.generate import generate_batch


@pytest.fixture(scope="module")
def mixed():
    """3,000 packets, about 30 % IPv6, real per-flow lengths (40 .. 1560 bytes)."""
    batch = generate_batch(3000, 300, seed=3, ipv6_share=0.3)
    assert batch.has_ipv6() and len(np.unique(batch.length)) > 20
    return batch


def _families(batch):
    v6 = batch.ipv6.astype(bool)
    return (batch.src_ip[~v6].tolist(), batch.length[~v6].tolist(),
            [bytes(x) for x in batch.src_ip6[v6]], batch.length[v6].tolist())


def _assert_same_state(sketch, model4, model6):
    ids, counts, occ = model4.state()
    assert np.array_equal(sketch.ids, np.array(ids)) and np.array_equal(sketch.occ, np.array(occ))
    assert np.array_equal(sketch.counts, np.array(counts))
    hi, lo, counts6, occ6 = model6.state()
    assert np.array_equal(sketch.hi6, np.array(hi, np.uint64)) and np.array_equal(sketch.lo6, np.array(lo, np.uint64))
    assert np.array_equal(sketch.counts6, np.array(counts6)) and np.array_equal(sketch.occ6, np.array(occ6))


@pytest.mark.parametrize("connection", [True, False])
def test_byte_weighted_residualsketch_matches_the_naive_model_on_mixed_traffic(mixed, connection):
    # small memory and T: collisions, takeovers and Residual Connection events all happen
    rs = ResidualSketch(memory_bytes=2400, threshold=20_000, weight="bytes", seed=5, connection=connection)
    rs.update(mixed)
    src4, w4, src6, w6 = _families(mixed)
    model4 = naive.NaiveResidualSketch(2400, 20_000, crucial=(16,), seed=5, weight="bytes", connection=connection)
    model4.update(src4, w4)
    model6 = naive.NaiveResidualSketch6(rs.params.ipv6_memory_bytes, 20_000, crucial=(32, 64), seed=5,
                                        weight="bytes", connection=connection)
    model6.update(src6, w6)
    assert rs.width == model4.w == 2400 // 2 // 24  # 12-byte buckets
    _assert_same_state(rs, model4, model6)
    assert sorted((p, L, d) for L, p, _, d in model4.hhh()) == sorted(rs.hhh())
    assert {(p, L): d for L, p, _, d in model6.hhh()} == {(e.prefix, e.length): e.discounted
                                                          for e in rs.hhh6_entries()}


def test_byte_weighted_cocosketch_matches_the_naive_model_on_mixed_traffic(mixed):
    cs = CocoSketch(memory_bytes=1200, threshold=20_000, weight="bytes", seed=9)
    cs.update(mixed)
    src4, w4, src6, w6 = _families(mixed)
    model4 = naive.NaiveResidualSketch(1200, 20_000, crucial=(), seed=9, weight="bytes")
    model4.update(src4, w4)
    model6 = naive.NaiveResidualSketch6(1200, 20_000, crucial=(), seed=9, weight="bytes")
    model6.update(src6, w6)
    _assert_same_state(cs, model4, model6)
    assert cs.memory_bytes == 2 * cs.width * 12 and cs.ipv6_memory_bytes == 2 * cs.width6 * 24


@pytest.mark.parametrize("cls", [ResidualSketch, CocoSketch])
def test_byte_weighted_hhh_answers_the_exact_weighted_truth(mixed, cls):
    """With memory to spare the sketch holds every key: its answers are the exact byte HHH."""
    v6 = mixed.ipv6.astype(bool)
    total = int(mixed.length.astype(np.int64).sum())
    T = int(0.02 * total)
    sketch = cls(memory_bytes=256 * 1024, threshold=T, weight="bytes")
    sketch.update(mixed)
    truth4 = exact.hhh(mixed.src_ip[~v6], threshold=T, weights=mixed.length[~v6])
    truth6 = exact.hhh6(mixed.src_ip6[v6], threshold=T, weights=mixed.length[v6])
    assert {(p, L): d for p, L, d in sketch.hhh()} == truth4
    assert {(e.prefix, e.length): e.discounted for e in sketch.hhh6_entries()} == truth6
    packets4 = exact.hhh(mixed.src_ip[~v6], threshold=T // 200)
    assert set(truth4) != set(packets4), "bytes and packets should rank these sources differently"
    top = max(truth4, key=lambda k: truth4[k])
    assert sketch.estimate(top[0], top[1]) == exact.prefix_counts(mixed.src_ip[~v6], weights=mixed.length[~v6])[
        top[1]][top[0]]
    assert sketch.unit == "bytes"


def test_byte_counts_pass_32_bits_without_wrapping():
    """40,000 full-size (65,535-byte) packets: 2.6e9 bytes, past int32, still exact."""
    addresses = np.full(40_000, 0x0A000001, np.uint32)
    weights = np.full(40_000, 65_535, np.uint16)
    rs = ResidualSketch(memory_bytes=4096, threshold=10**9, weight="bytes")
    rs.update_addresses(addresses[:1], weights[:1])  # first packet takes a bucket (coin 1/1)
    rs.update_addresses(addresses[1:], weights[1:])
    assert rs.counts.dtype == np.int64
    assert rs.estimate(0x0A000001, 32) == 40_000 * 65_535 > 2**31
    cs = CocoSketch(memory_bytes=4096, threshold=10**9, weight="bytes")
    # a newcomer against a > 2^32 bucket: the float coin path, no division by a truncated count
    cs.update_addresses(np.concatenate([addresses, [0x0B000001]]).astype(np.uint32),
                        np.concatenate([weights, [1500]]).astype(np.int64))
    assert cs.estimate(0, 0) == 40_000 * 65_535 + 1500


def test_zero_weight_packets_change_nothing_but_the_packet_index():
    a = ResidualSketch(memory_bytes=2400, threshold=500, weight="bytes")
    b = ResidualSketch(memory_bytes=2400, threshold=500, weight="bytes")
    keys = np.arange(1, 201, dtype=np.uint32) * np.uint32(65_537)
    a.update_addresses(keys, np.zeros(200, np.int64))
    assert not a.occ.any() and not a.counts.any() and a.packets == 200
    a.update_addresses(keys, np.full(200, 60, np.int64))
    b.packets = 200  # same coins: packet index 200 onwards
    b.update_addresses(keys, np.full(200, 60, np.int64))
    assert np.array_equal(a.cells, b.cells)


def test_packet_counting_is_unchanged_by_the_weight_key(mixed):
    plain = ResidualSketch(memory_bytes=2400, threshold=50, seed=2)
    named = ResidualSketch(memory_bytes=2400, threshold=50, seed=2, weight="packets")
    plain.update(mixed)
    named.update(mixed)
    assert plain.counts.dtype == np.int32 and plain.cells.dtype.itemsize == 8
    assert plain.to_bytes() == named.to_bytes()
    src4, _, src6, _ = _families(mixed)
    model4 = naive.NaiveResidualSketch(2400, 50, crucial=(16,), seed=2)
    model4.update(src4)
    model6 = naive.NaiveResidualSketch6(2400, 50, crucial=(32, 64), seed=2)
    model6.update(src6)
    _assert_same_state(plain, model4, model6)
    assert plain.unit == "packets"


@pytest.mark.parametrize("cls", [ResidualSketch, CocoSketch])
def test_byte_weighted_snapshot_round_trips_with_its_weight(mixed, cls):
    sketch = cls(memory_bytes=2400, threshold=20_000, weight="bytes", seed=1)
    sketch.update(mixed)
    again = cls.from_bytes(sketch.to_bytes())
    assert again.params.weight == "bytes" and again.counts.dtype == np.int64
    assert np.array_equal(again.cells, sketch.cells) and np.array_equal(again.counts6, sketch.counts6)
    assert again.to_bytes() == sketch.to_bytes() and again.hhh() == sketch.hhh()


def test_a_snapshot_without_weight_loads_as_packets(mixed):
    sketch = ResidualSketch(memory_bytes=2400, threshold=50)
    sketch.update(mixed)
    blob = sketch.to_bytes()
    (length,) = struct.unpack_from("<I", blob, 4)
    header = json.loads(blob[8:8 + length])
    assert "weight" not in header["params"]
    loaded = ResidualSketch.from_bytes(blob)
    assert loaded.params.weight == "packets" and loaded.hhh() == sketch.hhh()


def test_bad_weight_settings_are_refused():
    with pytest.raises(SketchError, match="weight must be 'packets' or 'bytes'"):
        ResidualSketch(threshold=10, weight="octets")
    with pytest.raises(SketchError, match="expected_bytes"):
        ResidualSketch(weight="bytes", phi=1e-3, expected_packets=1000)
    with pytest.raises(SketchError, match="expected_bytes needs weight"):
        CocoSketch(threshold=None, expected_bytes=10**6)
    assert ResidualSketch(weight="bytes", phi=1e-3, expected_bytes=10**9).T == 10**6
    with pytest.raises(SketchError, match="counts packets"):
        ResidualSketch(threshold=10).update_addresses(np.ones(3, np.uint32), np.ones(3, np.int64))
    with pytest.raises(SketchError, match="non-negative"):
        ResidualSketch(threshold=10, weight="bytes").update_addresses(np.ones(3, np.uint32), np.array([1, -1, 1]))


def test_exact_oracle_weights_match_a_brute_force_sum(mixed):
    keys = mixed.src_ip.tolist()
    lengths = mixed.length.tolist()
    brute: dict[int, int] = {}
    for key, size in zip(keys, lengths):
        brute[key] = brute.get(key, 0) + size
    assert exact.count_dict(mixed.src_ip, mixed.length) == brute
    total = sum(lengths)
    assert exact.heavy_hitters(mixed.src_ip, phi=0.01, weights=mixed.length) == {
        k: v for k, v in brute.items() if v > 0.01 * total}
    weighted = exact.mixed_count_dict(mixed, "src_ip", weight="bytes")
    assert sum(weighted.values()) == total
    assert exact.mixed_count_dict(mixed, "src_ip") == exact.mixed_count_dict(mixed, "src_ip", weight="packets")


def test_service_config_takes_a_weight_per_sketch():
    from telesketch.service.config import ConfigError, ServiceConfig

    hhh = {"kind": "residualsketch", "weight": "bytes", "phi": 1e-3, "expected_bytes": 10**9}
    ServiceConfig(sketches={"hhh_bytes": hhh}).validate()
    with pytest.raises(ConfigError, match="'hhh_bytes': weight must be"):
        ServiceConfig(sketches={"hhh_bytes": {**hhh, "weight": "octets"}}).validate()
    with pytest.raises(ConfigError, match="'gaps': kind 'gapfilter_ao' counts packets only"):
        ServiceConfig(sketches={"gaps": {"kind": "gapfilter_ao", "weight": "bytes"}}).validate()
    ServiceConfig(sketches={"gaps": {"kind": "gapfilter_ao", "weight": "packets"}}).validate()


def test_a_packet_weight_on_a_packet_only_kind_builds_the_sketch():
    from telesketch.service.config import ServiceConfig
    from telesketch.service.sketchset import SketchSet

    config = ServiceConfig(sketches={"gaps": {"kind": "gapfilter_ao", "memory_bytes": 4096, "weight": "packets"},
                                     "hhh": {"kind": "residualsketch", "memory_bytes": 4096, "threshold": 500,
                                             "weight": "bytes"}}).validate()
    sketches = SketchSet.from_config(config.sketches)
    assert sorted(cs.name for cs in sketches.sketches if cs.active) == ["gaps", "hhh"]


def test_a_window_of_byte_weighted_epochs_answers_phi_of_its_bytes(mixed):
    """The query's phi is a fraction of the window's bytes (not packets) for a byte-weighted sketch."""
    parts = mixed.split(1500)
    states = []
    for part in parts:
        sketch = ResidualSketch(memory_bytes=256 * 1024, threshold=10**6, weight="bytes")
        sketch.update(part)
        states.append(ResidualSketch.from_bytes(sketch.to_bytes()))
    assert sum(s.total_weight for s in states) == int(mixed.length.astype(np.int64).sum())
    answer = ResidualSketch.combine(states).hhh(len(mixed), phi=0.03)
    v6 = mixed.ipv6.astype(bool)
    truth = exact.hhh(mixed.src_ip[~v6], threshold=0.03 * int(mixed.length.astype(np.int64).sum()),
                      weights=mixed.length[~v6])
    assert truth and {(p, L): d for p, L, d in answer.rows} == truth


def test_service_answers_byte_weighted_hhh_in_bytes_and_says_so(tmp_path):
    """A real service (gRPC ingest, HTTP query) with a byte-weighted and a packet ResidualSketch."""
    import urllib.request

    from telesketch.client import Client
    from telesketch.packets import PacketBatch
    from telesketch.service.config import ServiceConfig
    from telesketch.service.server import ServiceThread
    from workloads import BASE_EPOCH, EPOCH_NS, service_traffic

    traffic = PacketBatch.concat(service_traffic(n_epochs=2, per_epoch=4000))
    traffic.length[:] = 64 + (traffic.src_ip % 23) * 60  # sizes differ by source: byte ranks != packet ranks
    sketches = {"hhh_bytes": {"kind": "residualsketch", "memory_bytes": 256 * 1024, "threshold": 10**6,
                              "weight": "bytes"},
                "hhh": {"kind": "residualsketch", "memory_bytes": 256 * 1024, "threshold": 300}}
    config = ServiceConfig(grpc_address="127.0.0.1:0", http_address="127.0.0.1:0", data_dir=str(tmp_path / "d"),
                           epoch_seconds=1.0, sketches=sketches).validate()
    svc = ServiceThread(config).start()
    try:
        Client(f"127.0.0.1:{svc.grpc_port}", sender_id="w").push(traffic.split(2048))

        def get(query):
            with urllib.request.urlopen(f"http://127.0.0.1:{svc.http_port}/api/v1/hhh?{query}", timeout=10) as r:
                return json.load(r)

        in_epoch = (traffic.ts_ns // np.uint64(EPOCH_NS)) == BASE_EPOCH
        rows = get(f"sketch=hhh_bytes&epoch={BASE_EPOCH}&phi=0.05")
        truth = exact.hhh(traffic.src_ip[in_epoch], phi=0.05, weights=traffic.length[in_epoch])
        assert rows and all(r["unit"] == "bytes" for r in rows)
        assert {(r["value"], r["length"]): r["estimate"] for r in rows} == truth
        packet_rows = get(f"sketch=hhh&epoch={BASE_EPOCH}&phi=0.05")
        assert packet_rows and all("unit" not in r for r in packet_rows)
        assert {(r["value"], r["length"]) for r in packet_rows} != set(truth)
    finally:
        svc.stop()


# ---------------------------------------------------------------------------- Hidden Sketch by bytes
# the small 4-byte configuration of test_hiddensketch.py, byte-weighted (thresh in bytes) and with an
# IPv6 companion the naive model can follow
HS_SMALL = dict(memory_bytes=8 * 1024, blocks=4, bf_row_bits=400, cm_bytes=1200, phi=2e-3, thresh=20_000,
                weight="bytes", ipv6_memory_bytes=64 * 1024)


def _byte_truth(batch, side="src"):
    """Exact bytes per source in the sketch's key form: ``int`` IPv4, 16-byte IPv6."""
    v6 = batch.ipv6.astype(bool)
    truth = Counter()
    for key, size in zip(getattr(batch, side + "_ip")[~v6].tolist(), batch.length[~v6].tolist()):
        truth[key] += size
    for key, size in zip(getattr(batch, side + "_ip6")[v6], batch.length[v6].tolist()):
        truth[bytes(key)] += size
    return truth


def _assert_hs_state(sketch, model):
    state = sketch.unpacked_state()
    assert np.array_equal(state["fs"], np.array(model.FS)) and np.array_equal(state["cm"], np.array(model.CM))
    for b in range(sketch.params.blocks):
        for i, bitmap in enumerate(state["seg"][b]):
            assert np.array_equal(bitmap, np.array(model.SEG[b][i], bool))
    for j, rows in enumerate(state["bf"]):
        for r, row in enumerate(rows):
            assert np.array_equal(row, np.array(model.BF[j][r], bool))


def test_byte_weighted_hiddensketch_matches_the_naive_model_on_mixed_traffic(mixed):
    sketch = HiddenSketch(**HS_SMALL)
    for part in mixed.split(700):
        sketch.update(part)
    assert sketch.fs.dtype == np.uint32 and sketch.cm.dtype == np.uint64 and sketch.unit == "bytes"
    assert sketch.params.cm_width == 1200 // 3 // 8 and sketch.ipv6.cm.dtype == np.uint64
    v6 = mixed.ipv6.astype(bool)
    model4 = naive_hs.NaiveHiddenSketch(sketch.params)
    model4.update(mixed.src_ip[~v6].tolist(), mixed.length[~v6].tolist())
    model6 = naive_hs.NaiveHiddenSketch(sketch.params.ipv6_companion())
    model6.update([bytes(k) for k in mixed.src_ip6[v6]], mixed.length[v6].tolist())
    _assert_hs_state(sketch, model4)
    _assert_hs_state(sketch.ipv6, model6)
    assert sketch.total_weight == model4.N + model6.N == int(mixed.length.astype(np.int64).sum())
    assert sketch.n_items == len(mixed)
    # the decode: each family's second-stage counts are its model's; reports against phi of all bytes
    want = {**model4.decode()["ss_counts"], **model6.decode()["ss_counts"]}
    result = sketch.decode()
    assert result.ss_counts == want and result.decode_ok
    limit = HS_SMALL["phi"] * sketch.total_weight
    assert dict(result.items) == {k: c + HS_SMALL["thresh"] for k, c in want.items() if c + HS_SMALL["thresh"] > limit}
    # never an under-count: estimate within [bytes, bytes + thresh]
    truth = _byte_truth(mixed)
    assert {type(k) for k, _ in result.items} == {int, bytes}
    for key, estimate in result.items:
        assert truth[key] <= estimate <= truth[key] + HS_SMALL["thresh"]
    probe = mixed.src_ip[~v6][:40]
    assert sketch.point_estimate(probe).tolist() == [model4.query(int(k)) for k in probe]


def test_byte_weighted_hiddensketch_answers_the_exact_byte_heavy_hitters(mixed):
    """Ample memory and thresh 0: every byte goes to the second stage and the decode is exact."""
    phi = 0.01
    sketch = HiddenSketch(memory_bytes=256 * 1024, cm_bytes=64 * 1024, phi=phi, thresh=0, weight="bytes")
    sketch.update(mixed)
    truth = _byte_truth(mixed)
    total = int(mixed.length.astype(np.int64).sum())
    want = {k: v for k, v in truth.items() if v > phi * total}
    assert dict(sketch.heavy_hitters()) == want and sketch.decode().decode_ok
    assert {type(k) for k in want} == {int, bytes}
    v6 = mixed.ipv6.astype(bool)
    assert exact.heavy_hitters(mixed.src_ip[~v6], threshold=phi * total, weights=mixed.length[~v6]) == {
        k: v for k, v in want.items() if isinstance(k, int)}
    packets = HiddenSketch(memory_bytes=256 * 1024, cm_bytes=64 * 1024, phi=phi, thresh=0)
    packets.update(mixed)
    assert set(dict(packets.heavy_hitters())) != set(want), "bytes and packets should rank sources differently"


def test_byte_weighted_hiddensketch_passes_32_bits_without_wrapping():
    """70,000 full-size packets of one source: 4.6e9 bytes saturate every 32-bit FS row; the 64-bit
    CM still holds the exact count (the gate passes whole packets once every row is saturated)."""
    n = 70_000
    sketch = HiddenSketch(memory_bytes=64 * 1024, thresh=1_000_000, weight="bytes")
    keys = np.concatenate([np.full(n, 0x0A000001, np.uint32), np.arange(1, 101, dtype=np.uint32)])
    weights = np.concatenate([np.full(n, 65_535, np.int64), np.full(100, 1500, np.int64)])
    sketch.update_keys(keys, weights)
    assert sketch.fs.max() == 2**32 - 1
    assert dict(sketch.heavy_hitters()) == {0x0A000001: n * 65_535} and n * 65_535 > 2**32
    assert sketch.total_weight == n * 65_535 + 150_000


def test_hiddensketch_packet_counting_is_unchanged_by_the_weight_key(mixed):
    plain = HiddenSketch(**{**HS_SMALL, "weight": "packets", "thresh": 30})
    base = {k: v for k, v in HS_SMALL.items() if k != "weight"}
    named = HiddenSketch(**{**base, "thresh": 30})
    plain.update(mixed)
    named.update(mixed)
    assert plain.fs.dtype == np.uint8 and plain.cm.dtype == np.uint32 and plain.unit == "packets"
    assert plain.to_bytes() == named.to_bytes()
    header = json.loads(plain.to_bytes()[8:8 + struct.unpack_from("<I", plain.to_bytes(), 4)[0]])
    assert "weight" not in header["params"] and "expected_epoch_bytes" not in header["params"]
    assert HiddenSketch.from_bytes(plain.to_bytes()).params.weight == "packets"


def test_byte_weighted_hiddensketch_snapshot_round_trips(mixed):
    sketch = HiddenSketch(**HS_SMALL)
    sketch.update(mixed)
    again = HiddenSketch.from_bytes(sketch.to_bytes())
    assert again.params.weight == "bytes" and again.total_weight == sketch.total_weight
    assert again.to_bytes() == sketch.to_bytes() and again.heavy_hitters() == sketch.heavy_hitters()
    assert again.ipv6.cm.dtype == np.uint64


def test_bad_hiddensketch_weight_settings_are_refused():
    with pytest.raises(SketchError, match="weight must be 'packets' or 'bytes'"):
        HiddenSketch(weight="octets")
    with pytest.raises(SketchError, match="one-pass only"):
        HiddenSketch(weight="bytes", mode="two_pass")
    with pytest.raises(SketchError, match="expected_epoch_bytes needs weight"):
        HiddenSketch(expected_epoch_bytes=10**9)
    with pytest.raises(SketchError, match="fs_counter_bits"):
        HiddenSketch(fs_counter_bits=32)
    assert HiddenSketch(weight="bytes", phi=1e-4, expected_epoch_bytes=10**9).thresh == 10**5 - 10
    with pytest.raises(SketchError, match="weights are required"):
        HiddenSketch().update_keys(np.ones(3, np.uint32), np.ones(3, np.int64))
    with pytest.raises(SketchError, match="weights are required"):
        HiddenSketch(weight="bytes").update_keys(np.ones(3, np.uint32))
    with pytest.raises(SketchError, match="non-negative"):
        HiddenSketch(weight="bytes").update_keys(np.ones(3, np.uint32), np.array([1, -1, 1]))


def test_service_answers_byte_weighted_heavy_hitters_in_bytes_and_says_so(tmp_path):
    """A real service (gRPC ingest, HTTP query): a byte-weighted Hidden Sketch with ample memory
    answers the exact byte heavy hitters of both families, per epoch and over the window, in bytes."""
    import urllib.request

    from telesketch.client import Client
    from telesketch.packets import PacketBatch, format_ipv4, format_ipv6
    from telesketch.service.config import ServiceConfig
    from telesketch.service.server import ServiceThread
    from workloads import BASE_EPOCH, EPOCH_NS, service_traffic

    traffic = PacketBatch.concat(service_traffic(n_epochs=2, per_epoch=4000))
    traffic.length[:] = 64 + (traffic.src_ip % 23) * 60  # sizes differ by source: byte ranks != packet ranks
    hs = {"kind": "hiddensketch", "memory_bytes": 256 * 1024, "cm_bytes": 64 * 1024, "thresh": 0, "phi": 0.01}
    config = ServiceConfig(grpc_address="127.0.0.1:0", http_address="127.0.0.1:0", data_dir=str(tmp_path / "d"),
                           epoch_seconds=1.0, sketches={"talkers_bytes": {**hs, "weight": "bytes"},
                                                        "gated_bytes": {**hs, "weight": "bytes", "thresh": 2000},
                                                        "talkers": hs}).validate()
    svc = ServiceThread(config).start()
    try:
        Client(f"127.0.0.1:{svc.grpc_port}", sender_id="w").push(traffic.split(2048))

        def get(query):
            with urllib.request.urlopen(f"http://127.0.0.1:{svc.http_port}/api/v1/heavy_hitters?{query}",
                                        timeout=10) as r:
                return json.load(r)

        def text(key):
            return format_ipv4(key) if isinstance(key, int) else format_ipv6(key)

        in_epoch = (traffic.ts_ns // np.uint64(EPOCH_NS)) == BASE_EPOCH
        for part, query in ((traffic[in_epoch], f"epoch={BASE_EPOCH}"),
                            (traffic, "last=2")):
            truth = _byte_truth(part)
            total = int(part.length.astype(np.int64).sum())
            want = {text(k): v for k, v in truth.items() if v > 0.03 * total}
            rows = get(f"sketch=talkers_bytes&{query}&phi=0.03")
            assert rows and all(r["unit"] == "bytes" and not r["partial"] for r in rows)
            assert {r["key"]: r["estimate"] for r in rows} == want, query
            # a 2,000-byte gate is above phi x the window's packets but below phi x its bytes: answered,
            # each estimate within [bytes, bytes + gate]
            gated = {r["key"]: r["estimate"] for r in get(f"sketch=gated_bytes&{query}&phi=0.03")}
            by_text = {text(k): v for k, v in truth.items()}
            epochs = 1 if "epoch" in query else 2  # the window sums per-epoch estimates
            assert set(want) <= set(gated)
            assert all(by_text[k] <= v <= by_text[k] + 2000 * epochs for k, v in gated.items())
        packet_rows = get(f"sketch=talkers&epoch={BASE_EPOCH}&phi=0.03")
        assert packet_rows and all("unit" not in r for r in packet_rows)
    finally:
        svc.stop()


def test_byte_weighted_heavy_changers_take_phi_of_the_larger_windows_bytes(mixed):
    """Heavy changers between two byte-weighted epochs (ample memory, thresh 0: exact counts) are the
    exact byte changes above phi x max(bytes before, bytes after), over a window and from the sketch."""
    from telesketch.service import sketchset as ss
    from telesketch.service.config import ServiceConfig

    before_batch, after_batch = mixed[:1500], mixed[1500:]
    states = []
    for part in (before_batch, after_batch):
        sketch = HiddenSketch(memory_bytes=256 * 1024, cm_bytes=64 * 1024, phi=0.01, thresh=0, weight="bytes")
        sketch.update(part)
        states.append(sketch)
    old, new = _byte_truth(before_batch), _byte_truth(after_batch)
    volume = max(int(before_batch.length.astype(np.int64).sum()), int(after_batch.length.astype(np.int64).sum()))
    want = {k: new[k] - old[k] for k in old.keys() | new.keys() if abs(new[k] - old[k]) > 0.02 * volume}
    assert want
    config = ServiceConfig(sketches={"hc": {"kind": "hiddensketch", "memory_bytes": 256 * 1024, "cm_bytes": 65536,
                                            "thresh": 0, "phi": 0.01, "weight": "bytes"}}).validate()
    cs = ss.SketchSet.from_config(config.sketches).sketches[0]
    got = ss.heavy_changers(cs, [states[0]], [states[1]], len(before_batch), len(after_batch), phi=0.02)
    assert dict(got.rows) == want
    assert dict(states[1].heavy_changers(states[0], hc_threshold=0.02 * volume)) == want
