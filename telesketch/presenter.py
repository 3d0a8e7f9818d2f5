"""The one place that turns answers into text and JSON: addresses, prefixes, flow keys, times, rows.

gRPC (:mod:`telesketch.service.server`), HTTP (:mod:`telesketch.service.http`), the CLI
(:mod:`telesketch.cli`) and the report (:mod:`telesketch.report`) all format through these
functions, so a key reads the same everywhere, and IPv6 text (RFC 5952) is added here once.

Keys as answers carry them: ``int`` (a 4-byte address, or a 32-bit fingerprint for LLM-Sketch's
``int_keys="fingerprint"``) or 13-byte ``bytes`` flow keys.
"""
from __future__ import annotations

from datetime import datetime, timezone

import numpy as np

from telesketch.packets import FLOW_KEY_BYTES, format_ipv4, format_ipv6, unpack_flow_key


def format_address(address: int) -> str:
    """``10.0.0.1``: an address (``int``, IPv4 host order) as text."""
    return format_ipv4(int(address))


def format_prefix(prefix: int, length: int) -> str:
    """``10.1.0.0/16``: a prefix and its length as text."""
    return f"{format_address(prefix)}/{length}"


def format_flow(key: bytes) -> str:
    """``10.0.0.1:1234 > 10.0.0.2:80 proto 6``: a 13-byte flow key as text."""
    src, dst, sport, dport, proto = unpack_flow_key(bytes(key))
    return f"{format_address(src)}:{sport} > {format_address(dst)}:{dport} proto {proto}"


def key_text(key, int_keys: str = "ipv4") -> str:
    """Readable key: an address, a flow (see :func:`format_flow`) or ``fp:0x1234abcd`` (a fingerprint)."""
    if isinstance(key, (bytes, bytearray)) and len(key) == FLOW_KEY_BYTES:
        return format_flow(key)
    if isinstance(key, (int, np.integer)):
        return f"fp:0x{int(key):08x}" if int_keys == "fingerprint" else format_address(int(key))
    return bytes(key).hex()


def key_bytes(key) -> bytes:
    """Wire form: ints as 4 big-endian bytes, flow keys as their 13 bytes."""
    return int(key).to_bytes(4, "big") if isinstance(key, (int, np.integer)) else bytes(key)


def time_text(ts_ns: int) -> str:
    """``2023-11-14T22:13:39.521010Z``: a UNIX timestamp in nanoseconds as ISO-8601 UTC (µs shown)."""
    seconds, ns = divmod(int(ts_ns), 1_000_000_000)
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + f".{ns // 1000:06d}Z"


def hhh_rows(rows) -> list[dict]:
    """HHH rows ``(prefix, length, estimate)``, as the query engine sorts them (by length, then
    prefix), as dicts: ``prefix`` text, ``value``, ``length``, ``estimate``, the closest reported
    ``parent`` prefix's text ("" for none) and ``depth`` (how many reported prefixes cover it)."""
    out, reported = [], []
    for prefix, length, estimate in rows:
        parents = [(p, n) for p, n in reported if n < length and (prefix >> (32 - n) if n else 0) == (p >> (32 - n) if n else 0)]
        parent = max(parents, key=lambda x: x[1]) if parents else None
        reported.append((prefix, length))
        out.append({"prefix": format_prefix(prefix, length), "value": prefix, "length": length,
                    "estimate": estimate, "parent": format_prefix(*parent) if parent else "", "depth": len(parents)})
    return out


def gap_rows(events: np.ndarray) -> list[dict]:
    """Gap events as the query engine orders them (structured rows: the ``GAP_EVENT_DTYPE`` fields
    and ``epoch``), as dicts: ``ts_ns``, ``key`` (wire form: 13 bytes for an IPv4 flow, 37 for an
    IPv6 one), ``text`` (the flow as :func:`format_flow` writes it; IPv6 endpoints bracketed, RFC
    5952), ``jump`` and ``epoch``. The text is read from the rows' fields, not from the key bytes."""
    from telesketch.sketches.gapfilter import event_flow_keys

    n = events.shape[0]
    cols = {name: events[name].tolist() for name in ("ts_ns", "src_ip", "dst_ip", "src_port", "dst_port", "proto",
                                                     "jump", "epoch")}
    v6 = events["ipv6"].tolist() if "ipv6" in (events.dtype.names or ()) else [0] * n
    out = []
    for i, key in enumerate(event_flow_keys(events)):
        if v6[i]:
            src, dst = f"[{format_ipv6(events['src_ip6'][i].tobytes())}]", f"[{format_ipv6(events['dst_ip6'][i].tobytes())}]"
        else:
            src, dst = format_address(cols["src_ip"][i]), format_address(cols["dst_ip"][i])
        text = f"{src}:{cols['src_port'][i]} > {dst}:{cols['dst_port'][i]} proto {cols['proto'][i]}"
        out.append({"ts_ns": cols["ts_ns"][i], "key": key, "text": text, "jump": cols["jump"][i],
                    "epoch": cols["epoch"][i]})
    return out
