"""The one place that turns answers into text and JSON: addresses, prefixes, flow keys, times, rows.

gRPC (:mod:`telesketch.service.server`), HTTP (:mod:`telesketch.service.http`), the CLI
(:mod:`telesketch.cli`) and the report (:mod:`telesketch.report`) all format through these
functions, so a key reads the same everywhere, in both address families.

Keys as answers carry them:

=====================  ===========================================================================
``int``                an IPv4 address (host order), or a 32-bit fingerprint for LLM-Sketch's
                       ``int_keys="fingerprint"``
4 / 16 ``bytes``       an IPv4 / IPv6 address, network order (IPv6 text per RFC 5952)
13 ``bytes``           an IPv4 flow ``src(4) dst(4) sport(2) dport(2) proto(1)``
37 ``bytes``           a flow of either family ``src(16) dst(16) sport(2) dport(2) proto(1)``
                       (IPv4 as v4-mapped ``::ffff:a.b.c.d``, printed as IPv4)
=====================  ===========================================================================

The ``parse_*`` functions go the other way for CLI and HTTP key arguments; bad text is a
``ValueError`` that says what was expected.

>>> key_text(bytes.fromhex("20010db8000000000000000000000001"))
'2001:db8::1'
>>> format_prefix(bytes.fromhex("20010db8") + bytes(12), 32)
'2001:db8::/32'
"""
from __future__ import annotations

import ipaddress
import re
from datetime import datetime, timezone

import numpy as np

from telesketch.packets import (FLOW_KEY37_BYTES, FLOW_KEY_BYTES, V4_MAPPED_PREFIX, format_ipv4, format_ipv6,
                                format_key, parse_ipv6)

#: IP protocol names accepted in flow text (``... udp``) besides ``proto <number>``.
PROTOCOL_NUMBERS = {"icmp": 1, "tcp": 6, "udp": 17, "gre": 47, "esp": 50, "ah": 51, "icmpv6": 58, "sctp": 132}


def format_address(address) -> str:
    """``10.0.0.1`` or ``2001:db8::1``: an address (``int`` IPv4 host order, or 4/16 network-order
    bytes) as text; IPv6 per RFC 5952 (v4-mapped as ``::ffff:10.0.0.1``)."""
    if isinstance(address, (int, np.integer)):
        return format_ipv4(int(address))
    address = bytes(address)
    if len(address) == 4:
        return format_ipv4(int.from_bytes(address, "big"))
    if len(address) == 16:
        return format_ipv6(address)
    raise ValueError(f"an address has 4 or 16 bytes, got {len(address)}")


def prefix_bytes(prefix, family: int | None = None) -> bytes:
    """Network-order bytes of a prefix: an ``int`` is 4 bytes (IPv4) unless ``family`` is 6."""
    if isinstance(prefix, (int, np.integer)):
        return int(prefix).to_bytes(16 if family == 6 else 4, "big")
    return bytes(prefix)


def format_prefix(prefix, length: int, family: int | None = None) -> str:
    """``10.1.0.0/16`` or ``2001:db8::/32``: a prefix (``int`` or 4/16 bytes) and its length as text."""
    return f"{format_address(prefix_bytes(prefix, family))}/{int(length)}"


def format_flow(key: bytes) -> str:
    """``10.0.0.1:1234 > 10.0.0.2:80 proto 6`` or ``[2001:db8::1]:443 > [2001:db8::2]:5353 proto 17``:
    a 13- or 37-byte flow key as text (a 37-byte key of two v4-mapped addresses prints as IPv4)."""
    key = bytes(key)
    if len(key) not in (FLOW_KEY_BYTES, FLOW_KEY37_BYTES):
        raise ValueError(f"a flow key has {FLOW_KEY_BYTES} or {FLOW_KEY37_BYTES} bytes, got {len(key)}")
    return format_key(key)


def key_text(key, int_keys: str = "ipv4") -> str:
    """Readable key of any form in the module table (``fp:0x1234abcd`` for a fingerprint); other
    byte lengths print as hex."""
    if isinstance(key, (int, np.integer)):
        return f"fp:0x{int(key):08x}" if int_keys == "fingerprint" else format_address(int(key))
    return format_key(bytes(key))


def key_family(key, int_keys: str = "ipv4") -> int:
    """4 or 6: the family of an address or flow key (a 37-byte key is 4 when both ends are
    v4-mapped); 0 for a fingerprint (``int_keys="fingerprint"``: the flow it names is unknown).
    Other forms count as 4."""
    if isinstance(key, (int, np.integer)):
        return 0 if int_keys == "fingerprint" else 4
    key = bytes(key)
    if len(key) == 16:
        return 4 if key[:12] == V4_MAPPED_PREFIX else 6
    if len(key) == FLOW_KEY37_BYTES:
        return 4 if key[:12] == V4_MAPPED_PREFIX and key[16:28] == V4_MAPPED_PREFIX else 6
    return 4


def key_order(key) -> tuple:
    """A total order over mixed keys: IPv4 before IPv6, then by network-order bytes (stable ties)."""
    if isinstance(key, (int, np.integer)):
        return (4, 0, int(key).to_bytes(8, "big"))
    key = bytes(key)
    return (key_family(key), len(key), key)


def ranked(rows, value_index: int = 1, by_magnitude: bool = False) -> list:
    """Rows ``(key, value, ...)`` largest value first (``by_magnitude``: largest ``|value|``), ties
    IPv4 before IPv6 then by key bytes, so mixed answers print in the same order every time."""
    def order(row):
        value = float(row[value_index])
        return (-abs(value) if by_magnitude else -value, key_order(row[0]))
    return sorted(rows, key=order)


def key_bytes(key) -> bytes:
    """Wire form: ints as 4 big-endian bytes, byte keys (4, 13, 16, 37 bytes) as they are."""
    return int(key).to_bytes(4, "big") if isinstance(key, (int, np.integer)) else bytes(key)


def key_json(key, int_keys: str = "ipv4") -> dict:
    """``{"key", "text", "family"}``: an ``int`` key stays an int, byte keys are hex."""
    return {"key": int(key) if isinstance(key, (int, np.integer)) else bytes(key).hex(),
            "text": key_text(key, int_keys), "family": key_family(key, int_keys)}


# ------------------------------------------------------------------------- array-at-a-time text
#: characters of one key's text in :func:`ipv4_texts` / :func:`fingerprint_texts`: the longest is
#: ``255.255.255.255``; a fingerprint's ``fp:0x1234abcd`` is 13
TEXT_WIDTH = 15
#: decimal digits of 0..255, right-aligned in three bytes, and which of them are used
_DEC = np.array([list(f"{i:>3}".encode()) for i in range(256)], np.uint8)
_DEC_USED = _DEC != ord(" ")
_HEX = np.frombuffer(b"0123456789abcdef", np.uint8)


def ipv4_texts(octets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`key_text` of many IPv4 keys at once (a reply's rows: no Python call per key).

    ``octets``: ``uint8[n, 4]``, network order. Returns ``(uint8[n, TEXT_WIDTH] characters,
    bool[n, TEXT_WIDTH] used)``, laid out ``ddd.ddd.ddd.ddd`` with each octet's leading blanks
    unused: ``chars[i][used[i]]`` is the dotted quad."""
    n = octets.shape[0]
    chars = np.full((n, TEXT_WIDTH), ord("."), np.uint8)
    used = np.ones((n, TEXT_WIDTH), bool)
    for i in range(4):
        chars[:, 4 * i : 4 * i + 3] = _DEC[octets[:, i]]
        used[:, 4 * i : 4 * i + 3] = _DEC_USED[octets[:, i]]
    return chars, used


def fingerprint_texts(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`key_text` of many fingerprints at once (``int_keys="fingerprint"``: ``fp:0x%08x``).

    ``keys``: ``uint32[n]``. Returns ``(uint8[n, TEXT_WIDTH], bool[n, TEXT_WIDTH])`` as
    :func:`ipv4_texts` (the first 13 places used)."""
    n = keys.shape[0]
    chars = np.zeros((n, TEXT_WIDTH), np.uint8)
    chars[:, :5] = np.frombuffer(b"fp:0x", np.uint8)
    for i in range(8):
        chars[:, 5 + i] = _HEX[(keys >> np.uint32(28 - 4 * i)) & np.uint32(0xF)]
    used = np.zeros((n, TEXT_WIDTH), bool)
    used[:, :13] = True
    return chars, used


# ---------------------------------------------------------------------------------------- parsing
def parse_address(text: str):
    """An address typed by an operator: IPv4 dotted quad -> ``int``; IPv6 (any RFC 4291 form,
    e.g. ``2001:db8::1``, ``::ffff:10.0.0.1``) -> 16 bytes. ValueError naming the text if neither."""
    text = text.strip()
    if ":" in text:
        return parse_ipv6(text.strip("[]"))
    try:
        return int(ipaddress.IPv4Address(text))
    except ipaddress.AddressValueError:
        raise ValueError(f"not an IPv4 or IPv6 address: {text!r}") from None


def parse_prefix(text: str) -> tuple[int, bytes, int]:
    """``10.1.0.0/16`` or ``2001:db8::/32`` -> ``(family, network-order prefix bytes, length)``;
    ValueError for bad text or host bits set."""
    try:
        net = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise ValueError(f"not a prefix like 10.1.0.0/16 or 2001:db8::/32: {text!r} ({exc})") from None
    return net.version, net.network_address.packed, net.prefixlen


_ENDPOINT = r"(?:\[(?P<{0}6>[^\]]+)\]|(?P<{0}4>[0-9.]+)):(?P<{0}port>\d+)"
_FLOW_TEXT = re.compile(r"^\s*" + _ENDPOINT.format("s") + r"\s*(?:>|->)\s*" + _ENDPOINT.format("d")
                        + r"\s+(?:proto\s+)?(?P<proto>\w+)\s*$", re.IGNORECASE)


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 0-65535")
    return port


def _proto(text: str) -> int:
    if text.isdigit():
        proto = int(text)
        if proto > 255:
            raise ValueError(f"protocol {proto} is out of range 0-255")
        return proto
    if text.lower() not in PROTOCOL_NUMBERS:
        raise ValueError(f"unknown protocol {text!r} (a number or one of {sorted(PROTOCOL_NUMBERS)})")
    return PROTOCOL_NUMBERS[text.lower()]


def parse_flow_key(text: str) -> bytes:
    """A flow key typed by an operator: the text :func:`format_flow` prints (``10.0.0.1:1234 >
    10.0.0.2:80 proto 6``, ``[2001:db8::1]:443 -> [2001:db8::2]:5353 udp``) or hex (26 digits: a
    13-byte key; 74: a 37-byte key). Two IPv4 ends give the 13-byte key, any IPv6 end the 37-byte
    key (an IPv4 end as ``::ffff:a.b.c.d``). ValueError saying what was expected otherwise."""
    stripped = text.strip()
    if re.fullmatch(r"[0-9a-fA-F]+", stripped):
        if len(stripped) in (2 * FLOW_KEY_BYTES, 2 * FLOW_KEY37_BYTES):
            return bytes.fromhex(stripped)
        raise ValueError(f"a hex flow key has {2 * FLOW_KEY_BYTES} or {2 * FLOW_KEY37_BYTES} digits, "
                         f"got {len(stripped)}: {text!r}")
    m = _FLOW_TEXT.match(text)
    if not m:
        raise ValueError(f"not a flow key: {text!r}; write 'SRC:PORT > DST:PORT proto N' "
                         "(IPv6 ends in brackets, [2001:db8::1]:443) or 26/74 hex digits")
    ends = []
    for side in ("s", "d"):
        if m[side + "6"] is not None:
            ends.append(parse_ipv6(m[side + "6"]))
        else:
            ends.append(int(ipaddress.IPv4Address(m[side + "4"])))
    tail = _port(m["sport"]).to_bytes(2, "big") + _port(m["dport"]).to_bytes(2, "big") + bytes([_proto(m["proto"])])
    if all(isinstance(e, int) for e in ends):
        return ends[0].to_bytes(4, "big") + ends[1].to_bytes(4, "big") + tail
    wide = [e if isinstance(e, bytes) else V4_MAPPED_PREFIX + e.to_bytes(4, "big") for e in ends]
    return wide[0] + wide[1] + tail


def time_text(ts_ns: int) -> str:
    """``2023-11-14T22:13:39.521010Z``: a UNIX timestamp in nanoseconds as ISO-8601 UTC (µs shown)."""
    seconds, ns = divmod(int(ts_ns), 1_000_000_000)
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + f".{ns // 1000:06d}Z"


# ---------------------------------------------------------------------------------------- HHH rows
def hhh_row_parts(row) -> tuple[int, bytes, int, float]:
    """``(family, prefix bytes, length, estimate)`` of an HHH row in any form an answer holds, told
    apart by its number of fields (a row is a tuple; no attribute probing):

    - 5: ``HHHRow(family, prefix, length, estimate, discounted)`` (what the sketches answer); the
      estimate given is the discounted one, as the IPv4-only answers always reported;
    - 4: ``(family, prefix, length, estimate)`` (a JSON row read back, e.g. by the plots);
    - 3: the IPv4-only ``(prefix, length, estimate)`` with an ``int`` or bytes prefix.

    Any other length is a ``ValueError``."""
    fields = len(row)
    if fields == 5:
        family, prefix, length, _estimate, discounted = row
        return int(family), prefix_bytes(prefix, family), int(length), discounted
    if fields == 4:
        family, prefix, length, estimate = row
        return int(family), prefix_bytes(prefix, family), int(length), estimate
    if fields == 3:
        prefix, length, estimate = row
        raw = prefix_bytes(prefix)
        return (6 if len(raw) == 16 else 4), raw, int(length), estimate
    raise ValueError(f"an HHH row has 5 fields (HHHRow), 4 (family, prefix, length, estimate) or 3 "
                     f"(prefix, length, estimate), got {fields}: {row!r}")


def _covers(outer: tuple[bytes, int], inner: bytes) -> bool:
    prefix, length = outer
    bits = 8 * len(prefix)
    return length == 0 or int.from_bytes(prefix, "big") >> (bits - length) == int.from_bytes(inner, "big") >> (bits - length)


def hhh_rows(rows) -> list[dict]:
    """HHH rows of both families (any form :func:`hhh_row_parts` reads) as dicts, in the answer's
    order (the engine's: by length, then prefix) with the IPv4 tree first: ``family``, ``prefix``
    text, ``value`` (the prefix as an ``int`` for IPv4, 32 hex digits for IPv6: JSON numbers cannot
    hold 128 bits), ``length``, ``estimate``, the closest reported ``parent`` prefix's text of the
    same family (``""`` for none) and ``depth`` (how many reported prefixes cover it)."""
    parts = sorted((hhh_row_parts(r) for r in rows), key=lambda p: p[0])  # stable: keeps each tree's order
    out = []
    for family, prefix, length, estimate in parts:
        parents = [(p, n) for f, p, n, _ in parts if f == family and n < length and _covers((p, n), prefix)]
        parent = max(parents, key=lambda x: x[1]) if parents else None
        out.append({"family": family, "prefix": format_prefix(prefix, length),
                    "value": int.from_bytes(prefix, "big") if family == 4 else prefix.hex(), "length": length,
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
