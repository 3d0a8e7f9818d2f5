"""The ``exact`` sketch kind: exact answers for small deployments and end-to-end tests.

It keeps the epoch's packets (the 5-tuple, ``ts_ns`` and ``ip_id`` columns: 23 bytes per packet,
plus ``ipv6`` and the 16-byte ``src_ip6``/``dst_ip6`` for batches holding IPv6: 56 bytes per
packet) and answers every query with the ground-truth oracles of :mod:`telesketch.sketches.exact`,
so its answers are exactly what those oracles say on the same packets. Memory grows with the
epoch's packet count; use it where an epoch holds at most a few million packets. It merges
(concatenation), so windows over several epochs are answered exactly.

Both address families are counted exactly (``exact.mixed_*``): heavy hitters/changers and flow
counts hold IPv4 keys as before (``int`` addresses, 13-byte flows) and IPv6 keys as 16-byte
addresses / 37-byte flows, against thresholds over all packets. HHH: :meth:`ExactSketch.hhh` answers
the IPv4 tree (as before IPv6), :meth:`ExactSketch.hhh_rows` (what the service's queries ask) both
trees side by side, IPv6 over ResidualSketch's IPv6 layers (``hierarchy.IPV6_LAYERS``), one threshold
over every packet. Gap events follow GapFilter's rule for its default ``seq_field`` (``ip_id``): an
IPv6 packet has no IP-ID sequence, so IPv6 flows are not inspected and never open a gap
(docs/IPV6.md); the events are the IPv4 flows' ones. The state is written in layout
version 1 (today's) while it holds no IPv6 packet, so IPv4-only snapshots are unchanged; version 2
adds the IPv6 columns, and both are read.

Bytes (issue 17). ``weight = "bytes"`` also keeps each packet's ``length`` column (2 more bytes per
packet) and answers in bytes: counts are byte sums and ``phi`` is a fraction of the window's bytes,
the ground truth of a byte-weighted sketch (what ``telesketch size`` sizes such a sketch against).
Its state is layout version 3 (``weight`` in the parameters, the ``length`` column beside the others);
a packet sketch's parameters and layouts are unchanged.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from telesketch.packets import FLOW_KEY37_BYTES, FLOW_KEY_BYTES, V4_MAPPED_PREFIX, PacketBatch
from telesketch.sketches import exact
from telesketch.sketches.core import SketchError, check_same_params, pack_state, unpack_state
from telesketch.sketches.core import Sketch
from telesketch.sketches.hierarchy import layers_for

#: Gap events, field for field like GapFilter's log (``jump`` is 0: the oracle does not report it).
GAP_EVENT_DTYPE = np.dtype([("src_ip", "<u4"), ("dst_ip", "<u4"), ("src_port", "<u2"), ("dst_port", "<u2"),
                            ("proto", "u1"), ("jump", "<i4"), ("ts_ns", "<u8")])

_COLUMNS = ("ts_ns", "src_ip", "dst_ip", "src_port", "dst_port", "proto", "ip_id")
#: Columns kept in addition for batches holding IPv6 (zero-filled for chunks without them).
_IPV6_COLUMNS = ("ipv6", "src_ip6", "dst_ip6")


@dataclass(frozen=True)
class ExactSketchParams:
    """``key``: ``src_ip`` / ``dst_ip`` (4-byte keys) or ``flow`` (13-byte 5-tuples) for heavy hitters/changers;
    ``phi`` their default fraction; ``hhh_phi`` and ``hhh_mode`` (``byte``/``bit``) for HHH over
    source prefixes; ``gap_t1``/``gap_t2``/``gap_reset`` the GapFilter ground-truth thresholds."""

    key: str = "src_ip"
    phi: float = 1e-4
    hhh_phi: float = 1e-3
    hhh_mode: str = "byte"
    gap_t1: int = 5
    gap_t2: int = 30
    gap_reset: int = 10000
    weight: str = "packets"

    def __post_init__(self):
        if self.weight not in ("packets", "bytes"):
            raise SketchError(f"exact weight must be 'packets' or 'bytes', got {self.weight!r}")
        if self.key not in ("src_ip", "dst_ip", "flow"):
            raise SketchError(f"exact key must be 'src_ip', 'dst_ip' or 'flow', got {self.key!r}")
        for name in ("phi", "hhh_phi"):
            if not 0 < getattr(self, name) < 1:
                raise SketchError(f"exact {name} must be in (0, 1), got {getattr(self, name)}")
        layers_for(self.hhh_mode)
        if not 0 < self.gap_t1 < self.gap_t2 < 2**15:
            raise SketchError(f"need 0 < gap_t1 < gap_t2 < 32768, got {self.gap_t1}, {self.gap_t2}")


class ExactSketch(Sketch):
    """Exact per-epoch counters over the stored packets (see the module docstring)."""

    #: it keeps the packets themselves, in order: joined batches are the same packets
    #: (``Sketch.batch_invariant``)
    batch_invariant = True

    @classmethod
    def takes_ipv6(cls, params: dict) -> bool:
        """IPv6 rows are counted (module docstring: how)."""
        return True

    ALGORITHM = "exact-service"
    VERSION = 2           #: layout with the IPv6 columns
    VERSION_IPV4 = 1      #: layout without them (written while no IPv6 packet is held)
    VERSION_BYTES = 3     #: byte-weighted: every column, IPv6 and ``length`` included
    IPV6 = True           #: counts IPv6 packets exactly (the service feeds it both families)

    def __init__(self, params: ExactSketchParams | None = None, **kwargs):
        if params is not None and kwargs:
            raise SketchError("give either ExactSketchParams or keyword parameters, not both")
        try:
            self.params = params if params is not None else ExactSketchParams(**kwargs)
        except TypeError as exc:
            raise SketchError(f"bad exact sketch parameters: {exc}") from None
        self._chunks: list[dict[str, np.ndarray]] = []

    # ------------------------------------------------------------------ state
    def update(self, batch: PacketBatch) -> None:
        """Keep the batch's key, timestamp and ``ip_id`` columns, and the IPv6 ones when it holds
        IPv6 (copies, so the batch may go)."""
        if not isinstance(batch, PacketBatch):
            raise SketchError(f"update expects a PacketBatch, got {type(batch).__name__}")
        if len(batch):
            names = _COLUMNS + _IPV6_COLUMNS if batch.has_ipv6() else _COLUMNS
            names += ("length",) if self.params.weight == "bytes" else ()
            self._chunks.append({name: np.array(getattr(batch, name)) for name in names})

    def _columns(self) -> dict[str, np.ndarray]:
        """All stored packets as one chunk (the IPv6 columns only when some chunk has them)."""
        if len(self._chunks) != 1:
            empty = PacketBatch.empty()
            parts = self._chunks or [{name: getattr(empty, name) for name in _COLUMNS}]
            names = _COLUMNS + (_IPV6_COLUMNS if any(_IPV6_COLUMNS[0] in p for p in parts) else ())
            names += ("length",) if self.params.weight == "bytes" else ()

            def part(p, name):
                if name in p:
                    return p[name]
                n = len(p["ts_ns"])
                return np.zeros((n, 16) if name in ("src_ip6", "dst_ip6") else n, getattr(empty, name).dtype)

            self._chunks = [{name: np.concatenate([part(p, name) for p in parts]) for name in names}]
        return self._chunks[0]

    def _has_ipv6(self) -> bool:
        cols = self._columns()
        return "ipv6" in cols and bool(cols["ipv6"].any())

    def batch(self) -> PacketBatch:
        """The stored packets as a batch (absent columns zero)."""
        return PacketBatch.from_columns(**self._columns())

    @property
    def packets(self) -> int:
        return sum(len(c["ts_ns"]) for c in self._chunks)

    @property
    def unit(self) -> str:
        return self.params.weight

    @property
    def volume(self) -> int:
        """``N`` of ``phi * N``: the stored packets, or their bytes when byte-weighted."""
        if self.params.weight == "bytes":
            return int(sum(int(c["length"].astype(np.int64).sum()) for c in self._chunks))
        return self.packets

    @property
    def memory_bytes(self) -> int:
        return sum(a.nbytes for c in self._chunks for a in c.values())

    def merge(self, other: "ExactSketch") -> None:
        """Append ``other``'s packets (windows over several epochs stay exact)."""
        check_same_params(self.params, other.params, "exact")
        self._chunks.extend(other._chunks)

    def copy(self) -> "ExactSketch":
        twin = ExactSketch(self.params)
        twin._chunks = list(self._chunks)  # chunks are never mutated in place
        return twin

    def to_bytes(self) -> bytes:
        """Layout version 1 (the IPv4 columns) while no IPv6 packet is held, else version 2;
        byte-weighted: version 3 (every column)."""
        cols = self._columns()
        if self.params.weight == "bytes":
            names = _COLUMNS + _IPV6_COLUMNS + ("length",)
            full = self.batch()
            return pack_state(self.ALGORITHM, self.VERSION_BYTES, self.params,
                              {n: np.ascontiguousarray(getattr(full, n)) for n in names})
        params = {k: v for k, v in asdict(self.params).items() if k != "weight"}  # packet layouts as before
        if self._has_ipv6():
            return pack_state(self.ALGORITHM, self.VERSION, params, cols)
        return pack_state(self.ALGORITHM, self.VERSION_IPV4, params, {n: cols[n] for n in _COLUMNS})

    @classmethod
    def from_bytes(cls, data: bytes) -> "ExactSketch":
        """A sketch from :meth:`to_bytes` output of either layout version."""
        params = arrays = None
        for version, columns in ((cls.VERSION, _COLUMNS + _IPV6_COLUMNS), (cls.VERSION_IPV4, _COLUMNS),
                                 (cls.VERSION_BYTES, _COLUMNS + _IPV6_COLUMNS + ("length",))):
            try:
                params, arrays, _, _ = unpack_state(data, cls.ALGORITHM, version)
            except SketchError as exc:
                if "layout version" not in str(exc) or version == cls.VERSION_BYTES:
                    raise
                continue
            expected = set(columns)
            break
        sketch = cls(**params)
        if set(arrays) != expected or len({len(a) for a in arrays.values()}) != 1:
            raise SketchError("exact sketch state has missing or ragged columns")
        sketch._chunks = [arrays]
        return sketch

    # ------------------------------------------------------------------ queries
    def keys(self) -> np.ndarray:
        """IPv4 heavy-hitter keys: ``uint32`` addresses (source or destination) or ``V13`` flow keys
        (the IPv6 ones: :func:`telesketch.sketches.exact.family_keys` of :meth:`batch`)."""
        if self.params.key in ("src_ip", "dst_ip"):
            return getattr(self.batch().family(4), self.params.key)
        return self.batch().family(4).flow_keys_void()

    def heavy_hitters(self, phi: float | None = None, threshold: float | None = None) -> list[tuple]:
        """``[(key, count)]`` with count ``> phi * N`` (default ``params.phi``) or ``> threshold``;
        IPv4 and IPv6 keys (see the module docstring), ``N`` all packets."""
        if phi is None and threshold is None:
            phi = self.params.phi
        return _sorted(exact.mixed_heavy_hitters(self.batch(), self.params.key, phi=phi, threshold=threshold,
                                                 weight=self.params.weight).items())

    def heavy_changers(self, previous: "ExactSketch", phi: float | None = None,
                       threshold: float | None = None) -> list[tuple]:
        """``[(key, count_now - count_before)]`` with ``|change| > phi * max(N_before, N_now)``."""
        if phi is None and threshold is None:
            phi = self.params.phi
        if self.params.weight == "bytes":  # byte changes above phi x the larger window's bytes
            thr = threshold if threshold is not None else phi * max(previous.volume, self.volume)
            old = exact.mixed_count_dict(previous.batch(), self.params.key, weight="bytes")
            new = exact.mixed_count_dict(self.batch(), self.params.key, weight="bytes")
            changes = {k: new.get(k, 0) - old.get(k, 0) for k in old.keys() | new.keys()}
            return _sorted(((k, d) for k, d in changes.items() if abs(d) > thr), by_abs=True)
        changes = exact.mixed_heavy_changers(previous.batch(), self.batch(), self.params.key, phi=phi,
                                             threshold=threshold)
        return _sorted(changes.items(), by_abs=True)

    def hhh(self, phi: float | None = None, threshold: float | None = None) -> list[tuple[int, int, float]]:
        """Discounted HHH over IPv4 source prefixes: ``[(prefix, length, discounted_count)]``
        (``phi`` a fraction of all packets, IPv6 included)."""
        if phi is None and threshold is None:
            phi = self.params.hhh_phi
        if threshold is None:
            threshold = exact.threshold_for(self.volume, phi)
        v4 = self.batch().family(4)
        found = exact.hhh(v4.src_ip, threshold=threshold, mode=self.params.hhh_mode, weights=self._weights(v4))
        return sorted(((p, length, c) for (p, length), c in found.items()), key=lambda e: (-e[1], e[0]))

    def hhh_rows(self, phi: float | None = None, threshold: float | None = None) -> list:
        """Discounted HHH over the source prefixes of both families, one threshold over all packets:
        ``[HHHRow(family, prefix bytes, length, estimate, discounted)]`` (``cocosketch.HHHRow``),
        IPv4 rows first (the :meth:`hhh` answer, hierarchy ``hhh_mode``), then IPv6 rows over
        :data:`~telesketch.sketches.hierarchy.IPV6_LAYERS` (ResidualSketch's IPv6 tree); each
        family finest first, then by prefix. ``estimate`` is the prefix's whole count."""
        from telesketch.sketches.cocosketch import HHHRow
        from telesketch.sketches.hierarchy import IPV6_LAYERS, hhh_from_counts

        if phi is None and threshold is None:
            phi = self.params.hhh_phi
        if threshold is None:
            threshold = exact.threshold_for(self.volume, phi)
        batch = self.batch()
        v4, v6 = batch.family(4), batch.family(6)
        layers4 = exact.layers_for(self.params.hhh_mode)
        counts4 = exact.prefix_counts(v4.src_ip, layers4, weights=self._weights(v4))
        found4 = hhh_from_counts(counts4, threshold)
        counts6 = exact.prefix_counts6(v6.src_ip6, IPV6_LAYERS, weights=self._weights(v6))
        found6 = hhh_from_counts(counts6, threshold, width=128)
        rows = [HHHRow(4, int(p).to_bytes(4, "big"), n, counts4[n][p], c) for (p, n), c in found4.items()]
        rows.sort(key=lambda r: (-r.length, r.prefix))
        six = [HHHRow(6, int(p).to_bytes(16, "big"), n, counts6[n][p], c) for (p, n), c in found6.items()]
        return rows + sorted(six, key=lambda r: (-r.length, r.prefix))

    def gap_events(self) -> np.ndarray:
        """Ground-truth gap items of the IPv4 packets (``ip_id`` as SEQ; IPv6 rows have no IP-ID
        sequence and open no gap): a structured array with the 5-tuple and ``ts_ns`` of every
        packet that opens a major gap, arrival order."""
        v4 = self.batch().family(4)
        p = self.params
        keys = v4.flow_keys()
        flags = exact.gap_labels(keys, v4.ip_id, p.gap_t1, p.gap_t2, p.gap_reset) if len(keys) else np.zeros(0, bool)
        events = np.zeros(int(flags.sum()), GAP_EVENT_DTYPE)
        for name in ("ts_ns", "src_ip", "dst_ip", "src_port", "dst_port", "proto"):
            events[name] = getattr(v4, name)[flags]
        return events

    def _weights(self, part: PacketBatch) -> np.ndarray | None:
        """The rows' weights for the ``exact`` oracles: None counting packets, lengths counting bytes."""
        return part.length if self.params.weight == "bytes" else None

    def flow_counts(self) -> dict[bytes, int]:
        """Packets (bytes, byte-weighted) per flow: 13-byte keys for IPv4 flows, 37-byte keys for IPv6 flows."""
        return exact.mixed_count_dict(self.batch(), "flow", weight=self.params.weight)

    def flow_size(self, keys: np.ndarray) -> np.ndarray:
        """Exact packet count of each key: ``uint8[n, 13]`` (IPv4) or ``uint8[n, 37]`` (either
        family; v4-mapped addresses name IPv4 flows): ``int64[n]``."""
        counts = self.flow_counts()
        keys = np.ascontiguousarray(keys, np.uint8)
        width = keys.shape[-1] if keys.ndim == 2 else FLOW_KEY_BYTES
        if width not in (FLOW_KEY_BYTES, FLOW_KEY37_BYTES):
            raise SketchError(f"flow keys must be {FLOW_KEY_BYTES} or {FLOW_KEY37_BYTES} bytes wide, got {width}")
        keys = keys.reshape(-1, width)
        return np.array([counts.get(_lookup_key(k.tobytes()), 0) for k in keys], np.int64)

    def top_flows(self, k: int) -> list[tuple[bytes, int]]:
        """The ``k`` largest flows ``(13-byte key, count)``, count descending then key ascending."""
        return _sorted(self.flow_counts().items())[:k]


def _lookup_key(key: bytes) -> bytes:
    """The :meth:`ExactSketch.flow_counts` form of a 13- or 37-byte key (v4-mapped -> 13 bytes)."""
    if len(key) == FLOW_KEY37_BYTES and key[:12] == V4_MAPPED_PREFIX and key[16:28] == V4_MAPPED_PREFIX:
        return key[12:16] + key[28:32] + key[32:37]
    return key


def _sorted(items, by_abs: bool = False) -> list[tuple]:
    """Count descending, then IPv4 (``int``) keys before IPv6 (``bytes``) keys, then key ascending."""
    return sorted(items, key=lambda kv: (-(abs(kv[1]) if by_abs else kv[1]), isinstance(kv[0], bytes), kv[0]))
