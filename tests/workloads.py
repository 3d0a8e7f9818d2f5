"""Fixed-seed workloads shared by the tests: packet batches, address and flow-key streams.

Every generator is deterministic in its seed (``seed`` an int, or ``rng`` an int or a
``numpy.random.Generator`` that the caller keeps drawing from afterwards), so a test's inputs are
the same on every run and every machine. Imported by the GPU test modules run as scripts under the
CUDA simulator too, so it imports nothing from ``numba.cuda``.
"""
from __future__ import annotations

import numpy as np

from telesketch.packets import PacketBatch
from telesketch.traces.generate import generate_batch

EPOCH_NS = 1_000_000_000
BASE_EPOCH = 1_700_000_000  #: epoch ids of :func:`service_traffic` start here (1 s epochs of late 2023)


def generator(rng) -> np.random.Generator:
    """``rng`` itself when it is a Generator (the caller's stream continues), else a new one seeded by it."""
    return np.random.default_rng(rng)


# ---------------------------------------------------------------------------- key streams
def zipf_ranks(n: int, universe: int, skew: float, rng) -> np.ndarray:
    """``int64[n]`` ranks ``0 .. universe-1`` drawn from a finite Zipf law of exponent ``skew``."""
    rng = generator(rng)
    cdf = np.cumsum(np.arange(1, universe + 1, dtype=np.float64) ** -skew)
    return np.minimum(np.searchsorted(cdf / cdf[-1], rng.random(n)), universe - 1)


def zipf_addresses(n: int, universe: int, skew: float, seed: int) -> np.ndarray:
    """``uint32[n]`` addresses drawn from a finite Zipf law over ``universe`` random distinct addresses."""
    rng = generator(seed)
    ids = rng.choice(2**32, universe, replace=False).astype(np.uint32)
    return ids[zipf_ranks(n, universe, skew, rng)]


def zipf_flow_keys(n: int, universe: int, skew: float, seed: int) -> np.ndarray:
    """``uint8[n, 13]`` 5-tuple keys drawn from a finite Zipf law over ``universe`` random keys."""
    rng = generator(seed)
    flows = rng.integers(0, 256, size=(universe, 13), dtype=np.uint8)
    return flows[zipf_ranks(n, universe, skew, rng)]


def address_pool(rng, size: int) -> np.ndarray:
    """``uint32[size]`` addresses clustered in four /8 and six /16 under each (so HHH prefixes
    aggregate); address 0 included (it must not be confused with an empty bucket)."""
    rng = generator(rng)
    top = rng.integers(1, 224, 4, dtype=np.uint32) << np.uint32(24)
    mid = rng.integers(0, 6, size, dtype=np.uint32) << np.uint32(16)
    low = rng.integers(0, 1 << 16, size, dtype=np.uint32)
    pool = top[rng.integers(0, 4, size)] | mid | low
    pool[0] = 0
    return pool


def hierarchical_addresses(n: int, seed: int, pool_size: int = 400) -> np.ndarray:
    """``uint32[n]`` addresses: unbounded Zipf(1.2) ranks over an :func:`address_pool`."""
    rng = generator(seed)
    pool = address_pool(rng, pool_size)
    ranks = np.minimum(rng.zipf(1.2, n) - 1, pool_size - 1)
    return pool[ranks].astype(np.uint32)


# ---------------------------------------------------------------------------- packet batches
def skewed_flow_ids(n: int, flows: int, rng) -> np.ndarray:
    """``int64[n]`` flow ids in ``[0, flows)``: Zipf(1.3) ranks shifted by 0, 1000 or 2000 (the
    flows of :func:`skewed_flows`)."""
    rng = generator(rng)
    return (rng.zipf(1.3, n) + rng.integers(0, 3, n) * 1000) % flows


def skewed_flow_columns(f: np.ndarray, flows_per_source: int = 1) -> dict[str, np.ndarray]:
    """The IPv4 columns of flow ids ``f`` (see :func:`skewed_flows`), for ``PacketBatch.from_columns``."""
    n = f.shape[0]
    return dict(src_ip=(f // flows_per_source * 2654435761) % 2**32, dst_ip=(f * 40503) % 2**32,
                src_port=f % 60000 + 1, dst_port=np.full(n, 443), proto=np.where(f % 5 == 0, 17, 6))


def skewed_flows(n: int, flows: int, rng, flows_per_source: int = 1) -> PacketBatch:
    """``n`` packets over ``flows`` Zipf(1.3) flows to port 443 (every fifth flow UDP); with
    ``flows_per_source`` > 1, that many consecutive flows share a source address (HHH aggregates)."""
    return PacketBatch.from_columns(**skewed_flow_columns(skewed_flow_ids(n, flows, rng), flows_per_source))


def ip_id_flows(n: int, n_flows: int, seed: int) -> PacketBatch:
    """``n`` TCP packets over ``n_flows`` Zipf(1.3) flows whose ``ip_id`` counts up by one from a
    random start, with 5 % jumps in [-40, 60] (gaps and reorderings for GapFilter); 1 us apart."""
    rng = generator(seed)
    flow = rng.zipf(1.3, n) % n_flows
    steps = np.where(rng.random(n) < 0.05, rng.integers(-40, 60, n), 1)
    seq = np.empty(n, np.int64)
    for f in np.unique(flow):  # per-flow running sum of steps from a random start
        at = np.flatnonzero(flow == f)
        seq[at] = (rng.integers(0, 65536) + np.cumsum(steps[at])) & 0xFFFF
    keys = rng.integers(0, 2**32, (n_flows, 2), dtype=np.uint64)
    ports = rng.integers(0, 2**16, (n_flows, 2))
    return PacketBatch.from_columns(
        src_ip=keys[flow, 0].astype(np.uint32), dst_ip=keys[flow, 1].astype(np.uint32),
        src_port=ports[flow, 0].astype(np.uint16), dst_port=ports[flow, 1].astype(np.uint16),
        proto=np.full(n, 6, np.uint8), ip_id=seq.astype(np.uint16),
        ts_ns=np.arange(n, dtype=np.uint64) * 1000,
    )


def service_traffic(n_epochs: int = 3, per_epoch: int = 30_000, batch_size: int = 8192, seed: int = 0,
                    first_epoch: int = BASE_EPOCH) -> list[PacketBatch]:
    """Zipf traffic over ``n_epochs`` one-second epochs, time-ordered, with ip_id gaps in some flows,
    split into batches of ``batch_size``: sources in 10.0.0.0/21, destinations in 192.168.0.0/25,
    and flow 7 bursting (5 % of the packets) in the last epoch, a heavy changer."""
    rng = generator(seed)
    n = n_epochs * per_epoch
    flow = (rng.zipf(1.2, n) % 3000).astype(np.int64)
    if n_epochs > 1:  # a heavy changer: flow 7 bursts in the last epoch
        last = slice((n_epochs - 1) * per_epoch, n)
        burst = rng.random(per_epoch) < 0.05
        flow[last] = np.where(burst, 7, flow[last])
    src = (0x0A000000 + (flow * 37) % 2048).astype(np.uint32)
    dst = (0xC0A80000 + flow % 97).astype(np.uint32)
    ts = (first_epoch * EPOCH_NS + np.sort(rng.integers(0, n_epochs * EPOCH_NS, n))).astype(np.uint64)
    # per-flow ip_id counts up by one; 1 % of packets jump ahead by 5..29 (major gaps)
    order = np.argsort(flow, kind="stable")
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n) - np.searchsorted(flow[order], flow[order])
    jumps = np.where(rng.random(n) < 0.01, rng.integers(5, 30, n), 0)
    ip_id = ((rank + (flow * 101) + np.cumsum(jumps)) & 0xFFFF).astype(np.uint16)
    batch = PacketBatch.from_columns(
        ts_ns=ts, src_ip=src, dst_ip=dst, src_port=(1024 + flow % 50000).astype(np.uint16),
        dst_port=np.full(n, 443, np.uint16), proto=np.full(n, 6, np.uint8), ip_id=ip_id,
        length=np.full(n, 800, np.uint16))
    return batch.split(batch_size)


def contract_batch(n: int = 2000, flows: int = 300, seed: int = 1) -> PacketBatch:
    """A realistic small batch from the capture generator (Zipf flow sizes, prefix-skewed sources,
    ip_id gaps): the contract suite's and the golden snapshots' workload."""
    return generate_batch(n, flows, seed=seed)


def flow_scores(batch: PacketBatch, seed: int) -> np.ndarray:
    """``float64[len(batch)]`` LLM-Sketch scores in [0, 1], fixed by ``seed`` (no estimator needed)."""
    return generator(seed).random(len(batch))
