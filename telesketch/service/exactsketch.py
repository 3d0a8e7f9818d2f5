"""The ``exact`` sketch kind: exact answers for small deployments and end-to-end tests.

It keeps the epoch's packets (the 5-tuple, ``ts_ns`` and ``ip_id`` columns: 23 bytes per packet)
and answers every query with the ground-truth oracles of :mod:`telesketch.sketches.exact`, so its
answers are exactly what those oracles say on the same packets. Memory grows with the epoch's
packet count; use it where an epoch holds at most a few million packets. It merges (concatenation),
so windows over several epochs are answered exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from telesketch.packets import FLOW_KEY_BYTES, PacketBatch
from telesketch.sketches import exact
from telesketch.sketches.core import SketchError, check_same_params, pack_state, unpack_state
from telesketch.sketches.core import Sketch

#: Gap events, field for field like GapFilter's log (``jump`` is 0: the oracle does not report it).
GAP_EVENT_DTYPE = np.dtype([("src_ip", "<u4"), ("dst_ip", "<u4"), ("src_port", "<u2"), ("dst_port", "<u2"),
                            ("proto", "u1"), ("jump", "<i4"), ("ts_ns", "<u8")])

_COLUMNS = ("ts_ns", "src_ip", "dst_ip", "src_port", "dst_port", "proto", "ip_id")


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

    def __post_init__(self):
        if self.key not in ("src_ip", "dst_ip", "flow"):
            raise SketchError(f"exact key must be 'src_ip', 'dst_ip' or 'flow', got {self.key!r}")
        for name in ("phi", "hhh_phi"):
            if not 0 < getattr(self, name) < 1:
                raise SketchError(f"exact {name} must be in (0, 1), got {getattr(self, name)}")
        exact.layers_for(self.hhh_mode)
        if not 0 < self.gap_t1 < self.gap_t2 < 2**15:
            raise SketchError(f"need 0 < gap_t1 < gap_t2 < 32768, got {self.gap_t1}, {self.gap_t2}")


class ExactSketch(Sketch):
    """Exact per-epoch counters over the stored packets (see the module docstring)."""

    ALGORITHM = "exact-service"
    VERSION = 1

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
        """Keep the batch's key, timestamp and ``ip_id`` columns (copies, so the batch may go)."""
        if not isinstance(batch, PacketBatch):
            raise SketchError(f"update expects a PacketBatch, got {type(batch).__name__}")
        if len(batch):
            self._chunks.append({name: np.array(getattr(batch, name)) for name in _COLUMNS})

    def _columns(self) -> dict[str, np.ndarray]:
        if len(self._chunks) != 1:
            empty = PacketBatch.empty()
            parts = self._chunks or [{name: getattr(empty, name) for name in _COLUMNS}]
            self._chunks = [{name: np.concatenate([p[name] for p in parts]) for name in _COLUMNS}]
        return self._chunks[0]

    def batch(self) -> PacketBatch:
        """The stored packets as a batch (absent columns zero)."""
        return PacketBatch.from_columns(**self._columns())

    @property
    def packets(self) -> int:
        return sum(len(c["ts_ns"]) for c in self._chunks)

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
        return pack_state(self.ALGORITHM, self.VERSION, self.params, self._columns())

    @classmethod
    def from_bytes(cls, data: bytes) -> "ExactSketch":
        params, arrays, _, _ = unpack_state(data, cls.ALGORITHM, cls.VERSION)
        sketch = cls(**params)
        if set(arrays) != set(_COLUMNS) or len({len(a) for a in arrays.values()}) != 1:
            raise SketchError("exact sketch state has missing or ragged columns")
        sketch._chunks = [arrays]
        return sketch

    # ------------------------------------------------------------------ queries
    def keys(self) -> np.ndarray:
        """Heavy-hitter keys: ``uint32`` addresses (source or destination) or ``V13`` flow keys."""
        if self.params.key in ("src_ip", "dst_ip"):
            return self._columns()[self.params.key]
        return self.batch().flow_keys_void()

    def heavy_hitters(self, phi: float | None = None, threshold: float | None = None) -> list[tuple]:
        """``[(key, count)]`` with count ``> phi * N`` (default ``params.phi``) or ``> threshold``."""
        if phi is None and threshold is None:
            phi = self.params.phi
        return _sorted(exact.heavy_hitters(self.keys(), phi=phi, threshold=threshold).items())

    def heavy_changers(self, previous: "ExactSketch", phi: float | None = None,
                       threshold: float | None = None) -> list[tuple]:
        """``[(key, count_now - count_before)]`` with ``|change| > phi * max(N_before, N_now)``."""
        if phi is None and threshold is None:
            phi = self.params.phi
        return _sorted(exact.heavy_changers(previous.keys(), self.keys(), phi=phi, threshold=threshold).items(),
                       by_abs=True)

    def hhh(self, phi: float | None = None, threshold: float | None = None) -> list[tuple[int, int, float]]:
        """Discounted HHH over source prefixes: ``[(prefix, length, discounted_count)]``."""
        if phi is None and threshold is None:
            phi = self.params.hhh_phi
        found = exact.hhh(self._columns()["src_ip"], phi=phi, threshold=threshold, mode=self.params.hhh_mode)
        return sorted(((p, length, c) for (p, length), c in found.items()), key=lambda e: (-e[1], e[0]))

    def gap_events(self) -> np.ndarray:
        """Ground-truth gap items of these packets (``ip_id`` as SEQ): a structured array with the
        5-tuple and ``ts_ns`` of every packet that opens a major gap, arrival order."""
        cols = self._columns()
        p = self.params
        keys = self.batch().flow_keys()
        flags = exact.gap_labels(keys, cols["ip_id"], p.gap_t1, p.gap_t2, p.gap_reset) if len(keys) else np.zeros(0, bool)
        events = np.zeros(int(flags.sum()), GAP_EVENT_DTYPE)
        for name in ("ts_ns", "src_ip", "dst_ip", "src_port", "dst_port", "proto"):
            events[name] = cols[name][flags]
        return events

    def flow_counts(self) -> dict[bytes, int]:
        return exact.count_dict(self.batch().flow_keys_void())

    def flow_size(self, keys: np.ndarray) -> np.ndarray:
        """Exact packet count of each 13-byte key (``uint8[n, 13]``): ``int64[n]``."""
        counts = self.flow_counts()
        keys = np.ascontiguousarray(keys, np.uint8).reshape(-1, FLOW_KEY_BYTES)
        return np.array([counts.get(k.tobytes(), 0) for k in keys], np.int64)

    def top_flows(self, k: int) -> list[tuple[bytes, int]]:
        """The ``k`` largest flows ``(13-byte key, count)``, count descending then key ascending."""
        return _sorted(self.flow_counts().items())[:k]


def _sorted(items, by_abs: bool = False) -> list[tuple]:
    return sorted(items, key=lambda kv: (-(abs(kv[1]) if by_abs else kv[1]), kv[0]))
