"""The analysis report: every answer of the service over one window, as JSON-able data and as text.

The report is built by asking a *query source* the service's queries. Two sources exist and they
run the same query code (:class:`telesketch.service.queries.QueryEngine`):

* :class:`LocalSource`: an :class:`~telesketch.service.epochs.EpochManager` in this process (no
  server; ``telesketch analyze``);
* :class:`RemoteSource`: a running service through :class:`telesketch.client.Client` (``telesketch
  demo``, or any replay followed by queries).

So ``analyze`` on a capture and a replay of it into a server configured the same way give the same
report (estimates are floats in both, as they travel over gRPC). Ground truth comes from a second
:class:`LocalSource` whose only sketch is the ``exact`` kind (:func:`truth_specs`), fed the same
packets and queried with the same windows and thresholds; :func:`add_accuracy` compares the two.

JSON schema (``telesketch analyze --json``; ``schema`` = ``"telesketch.report/1"``)
--------------------------------------------------------------------------------------
Keys are written as ``key`` + ``text`` + ``family`` (4 or 6): a 4-byte key is an ``int`` (an IPv4
address, or for the LLM-Sketch flow-size task a 32-bit fingerprint, text ``fp:0x...``), a 16-byte
IPv6 address is 32 hex digits (text RFC 5952, ``2001:db8::1``), a 13-byte flow key is 26 hex
digits (``src_ip dst_ip src_port dst_port proto``, big-endian), a 37-byte one 74 (IPv6 endpoints
print bracketed, ``[2001:db8::1]:443``). Rows of equal value list IPv4 before IPv6. Estimates are
numbers (packets).
Every query section carries ``sketch`` (configured name), ``combine`` (how the window's epochs were
combined, see ``telesketch.service``) and ``error`` (``null``, or why it has no answer: e.g. no
active sketch answers it, or heavy changers needing two epochs). A heavy hitters / changers section
whose Hidden Sketch decode could not finish also has ``"partial": true`` (keys may be missing,
estimates are upper bounds; the text report prints a PARTIAL line)::

    {
      "schema": "telesketch.report/1",
      "source":   {"mode": "analyze" | "service", "files": [paths], "target": "host:port" | null},
      "window":   {"last": N, "epochs": [epoch ids], "packets": packets in the window,
                   "epoch_seconds": s | null, "applied_packets": packets applied in all,
                   "whole_capture": the window holds every applied packet (no epoch dropped or left out)},
      "ingest":   {"packets", "bytes" (IP bytes), "late_packets", "batches", "seconds",
                   "packets_per_second", "bytes_per_second"},
      "sketches": [{"name", "kind", "active", "note", "memory_bytes",
                    "device" ("cpu" | "gpu"), "backend" (numpy | cupy | numba | simulator)}],  # local runs
      "notes":    ["sketch flows (llmsketch) not active: ..."],
      (every answered section also has "unit": "packets", or "bytes" for a byte-weighted sketch, whose
       estimates are bytes and whose heavy-hitter "threshold" is null: phi of the window's bytes)
      "heavy_hitters":  {"sketch", "combine", "phi", "threshold", "count", "error",
                         "floor" (packets; present when phi x packets was below the sketch's floor,
                         which the service refuses: then asked at the floor, "asked_threshold" = phi x packets),
                         "rows": [{"key", "text", "estimate"}]},          # largest first
      "more_heavy_hitters": [sections like heavy_hitters, one per other active Hidden Sketch (e.g. keyed by
                         dst_ip), no truth or accuracy],
      "heavy_changers": {..., "before": [epoch ids], "after": [epoch ids],
                         "rows": [{"key", "text", "change"}]},            # largest |change| first
      "hhh":            {..., "rows": [{"family", "prefix" (int for IPv4, 32 hex digits for IPv6), "length",
                                    "text" ("10.1.0.0/16", "2001:db8::/32"), "estimate"}]},  # IPv4 tree first
      "gaps":           {"sketch", "combine", "count", "error",
                         "events": [{"ts_ns", "time" (ISO-8601 UTC), "key", "text", "jump", "epoch"}]},  # by time
      "top_flows":      {"sketch", "combine", "k", "error", "rows": [{"key", "text", "estimate"}]},
      "ipv6":     null | {"scope": "window" | "since start" (a remote service's counters),
                          "withheld": {sketch: IPv6 packets withheld from an IPv4-only sketch},
                          "gap_coverage": {sketch: {"covered_packets", "skipped_packets": {reason: n},
                                           "epochs": the window's epochs that kept it (local runs)}}},
      "truth":    null | {the same five sections, answered by the exact kind},
      "by_family": {"4" | "6": {section: {"precision", "recall", "f1", "tp", "fp", "fn"}}} (with truth),
      "accuracy": null | {
          "heavy_hitters" | "heavy_changers" | "hhh" | "gaps" | "top_flows":
              {"precision", "recall", "f1", "tp", "fp", "fn", "are" (mean relative error of the
               estimate over the true positives; null for gaps)},
          "flow_size": {"flows" (true flows queried, at most 100,000, largest first),
                        "are" (over those flows), "are_top" (over the ``k`` largest), "k"}}
    }

A section whose sketch is not active has ``error`` set and no rows; its accuracy entry is absent.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from telesketch.packets import FLOW_KEY37_BYTES, FLOW_KEY_BYTES
from telesketch.presenter import format_prefix, gap_rows, hhh_row_parts, key_json, key_text, ranked, time_text
from telesketch.service.queries import MAX_FLOW_KEYS, MAX_TOP_K, QueryEngine, WindowSpec
from telesketch.errors import TelesketchError
from telesketch.service.sketchset import KINDS
from telesketch.sketches import exact

SCHEMA = "telesketch.report/1"
SECTIONS = ("heavy_hitters", "heavy_changers", "hhh", "gaps", "top_flows")
TRUTH = "truth"
#: The exact kind counting bytes: the truth of byte-weighted sections (``unit`` "bytes").
TRUTH_BYTES = "truth_bytes"


@dataclass(frozen=True)
class ReportOptions:
    """What the report asks. ``phi`` (heavy hitters and changers) and ``hhh_phi`` are fractions of
    the window's packets, passed explicitly to every sketch and to the truth so both use one
    threshold. ``phi`` defaults to 1e-3, not the service's 1e-4: the embedded Hidden Sketch gates
    keys below ``1e-4 * expected_epoch_items`` (250 packets an epoch), so a report over a capture
    of a few million packets asks for keys its sketch is built to report. ``last``: the window is the last N
    retained epochs (``None``: all retained). ``top``: rows shown per table in text; ``flows``:
    how many largest flows are asked (``top_flows`` k)."""

    phi: float = 1e-3
    hhh_phi: float = 1e-3
    last: int | None = None
    top: int = 10
    flows: int = 10
    gap_rows: int = 10


class Unanswered(Exception):
    """A query the source cannot answer (no active sketch, not enough epochs, ...)."""


# ====================================================================== sources
class LocalSource:
    """Queries on an in-process :class:`EpochManager` through the service's own QueryEngine."""

    def __init__(self, manager):
        self.manager = manager
        self.engine = QueryEngine(manager)

    def _ask(self, fn):
        try:
            return fn()
        except TelesketchError as exc:  # worded as the service would answer it
            from telesketch.service.server import grpc_status

            raise Unanswered(f"{grpc_status(exc).name}: {exc}") from None

    @staticmethod
    def _info(answer) -> dict:
        return {"epochs": list(answer.epochs), "packets": int(answer.packets), "sketch": answer.sketch,
                "combine": answer.combine, "partial": bool(answer.partial),
                "unit": answer.extra.get("unit", "packets")}

    def stats(self) -> dict:
        """Packets, retained epochs and the configured sketches (the service's ``Stats`` fields)."""
        m = self.manager
        with m.lock:
            sketches = [{"name": cs.name, "kind": cs.kind_name, "active": cs.active, "note": cs.note,
                         "memory_bytes": cs.memory(m.open.states[cs.name]) if cs.active and m.open else 0,
                         "device": cs.device, "backend": cs.backend}
                        for cs in m.sketchset.sketches]
            return {"packets": m.counters.packets, "late_packets": m.counters.late_packets,
                    "batches": m.counters.batches,
                    "epochs": [{"epoch": e.id, "packets": e.packets, "closed": e.closed} for e in m.epochs()],
                    "sketches": sketches}

    def keys(self, what: str, last: int, phi: float, sketch: str = "", threshold: float | None = None):
        """Heavy hitters or changers above ``phi`` of the window's packets (or ``threshold`` packets)."""
        call = self.engine.heavy_hitters if what == "heavy_hitters" else self.engine.heavy_changers
        a = self._ask(lambda: call(WindowSpec(last=last), sketch, None if threshold is not None else phi, threshold))
        info = self._info(a)
        info["int_keys"] = a.int_keys
        if "before" in a.extra:
            info["before"] = list(a.extra["before"])
        return [(k, float(v)) for k, v in a.rows], info

    def hhh(self, last: int, phi: float, sketch: str = ""):
        a = self._ask(lambda: self.engine.hhh(WindowSpec(last=last), sketch, phi))
        return [_hhh_parts(r) for r in a.rows], self._info(a)

    def gaps(self, last: int, sketch: str = ""):
        a = self._ask(lambda: self.engine.gaps(WindowSpec(last=last), sketch, 0))
        return [(r["ts_ns"], r["key"], r["jump"], r["epoch"]) for r in gap_rows(a.rows)], self._info(a)

    def top_flows(self, k: int, last: int, sketch: str = ""):
        a = self._ask(lambda: self.engine.top_flows(WindowSpec(last=last), k, sketch))
        info = self._info(a)
        info["int_keys"] = a.int_keys
        return [(k_, float(v)) for k_, v in a.rows], info

    def flow_size(self, keys: list[bytes], last: int, sketch: str = ""):
        a = self._ask(lambda: self.engine.flow_size(WindowSpec(last=last), keys, sketch))
        return [float(v) for _, v in a.rows], self._info(a)

    def ipv6(self, last: int) -> dict:
        """What IPv6 traffic the sketches saw: withheld packets per IPv4-only sketch (since start:
        the service counts them per sketch, not per epoch) and each GapFilter's coverage over the
        epochs of the last ``last`` that hold it (``epochs``; a closed epoch keeps its coverage at
        close, except one restored from a snapshot written before it was kept)."""
        from telesketch.service.metrics import gap_coverage, ipv4_only_sketches, sum_coverage

        m = self.manager
        with m.lock:
            window = {e.id for e in m.epochs()[-last:]}
            withheld = {name: 0 for name in ipv4_only_sketches(m)} | dict(m.sketchset.ipv6_withheld)
            coverage = {}
            for name, per in gap_coverage(m).items():
                ids = sorted(eid for eid in per if eid in window)
                coverage[name] = dict(sum_coverage(per[eid] for eid in ids), epochs=ids)
        return {"scope": "window", "window_epochs": len(window), "withheld": withheld, "gap_coverage": coverage}


class RemoteSource:
    """The same queries against a running service (``Client``); gRPC errors become Unanswered.
    ``metrics_url``: the service's ``/metrics`` (``http://host:port/metrics``), read for the IPv6
    counters (withheld packets, gap coverage since start); ``None``: the report has no ``ipv6``."""

    def __init__(self, client, metrics_url: str | None = None, token: str = ""):
        self.client = client
        self.metrics_url = metrics_url
        self.token = token

    def _ask(self, fn):
        import grpc

        try:
            return fn()
        except grpc.RpcError as exc:
            raise Unanswered(f"{exc.code().name}: {exc.details()}") from None

    @staticmethod
    def _info(window) -> dict:
        return {"epochs": [int(e) for e in window.epochs], "packets": int(window.packets), "sketch": window.sketch,
                "combine": window.combine, "partial": bool(window.partial),
                "unit": getattr(window, "unit", "") or "packets"}  # "": a server before WindowInfo.unit

    def stats(self) -> dict:
        s = self._ask(self.client.stats)
        return {"packets": int(s.get("packets", 0)), "late_packets": int(s.get("late_packets", 0)),
                "batches": int(s.get("batches", 0)),
                "epochs": [{"epoch": int(e["epoch"]), "packets": int(e.get("packets", 0)),
                            "closed": bool(e.get("closed", False))} for e in s.get("epochs", [])],
                "sketches": [{"name": x["name"], "kind": x["kind"], "active": bool(x.get("active", False)),
                              "note": x.get("note", ""), "memory_bytes": int(x.get("memory_bytes", 0))}
                             for x in s.get("sketches", [])]}

    def keys(self, what: str, last: int, phi: float, sketch: str = "", threshold: float | None = None):
        call = self.client.heavy_hitters if what == "heavy_hitters" else self.client.heavy_changers
        asked = {"phi": phi} if threshold is None else {"threshold": threshold}
        rows, window = self._ask(lambda: call(last=last, sketch=sketch, details=True, **asked))
        info = self._info(window)
        info["int_keys"] = _int_keys(window.sketch, self)
        if what == "heavy_changers":
            info["before"] = self._before(info["epochs"])
        return [(k, float(v)) for k, v in rows], info

    def _before(self, after: list[int]) -> list[int]:
        """Epoch ids of the window just before ``after`` (the service compares with it)."""
        ids = [e["epoch"] for e in self.stats()["epochs"]]
        start = ids.index(after[0]) if after and after[0] in ids else 0
        return ids[max(0, start - len(after)):start]

    def hhh(self, last: int, phi: float, sketch: str = ""):
        rows, window = self._ask(lambda: self.client.hhh(last=last, phi=phi, sketch=sketch, details=True,
                                                         families=(4, 6)))
        return [_hhh_parts(r) for r in rows], self._info(window)

    def gaps(self, last: int, sketch: str = ""):
        rows, window = self._ask(lambda: self.client.flow_gaps(last=last, sketch=sketch, details=True))
        return [(int(g.ts_ns), bytes(g.key), int(g.jump), int(g.epoch)) for g in rows], self._info(window)

    def top_flows(self, k: int, last: int, sketch: str = ""):
        rows, window = self._ask(lambda: self.client.top_flows(k, last=last, sketch=sketch, details=True))
        info = self._info(window)
        info["int_keys"] = _int_keys(window.sketch, self)
        return [(k_, float(v)) for k_, v in rows], info

    def flow_size(self, keys: list[bytes], last: int, sketch: str = ""):
        rows, window = self._ask(lambda: self.client.flow_size(keys, last=last, sketch=sketch, details=True))
        return [float(v) for v in rows], self._info(window)

    def ipv6(self, last: int) -> dict | None:
        """The IPv6 counters of ``/metrics`` (since the service started), or ``None`` without a URL."""
        if not self.metrics_url:
            return None
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

        request = urllib.request.Request(self.metrics_url)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(request, timeout=30) as reply:
            text = reply.read().decode()
        out: dict[str, Any] = {"scope": "since start", "withheld": {}, "gap_coverage": {}}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                name, sketch = sample.name, sample.labels.get("sketch", "")
                if name == "telesketch_ipv6_withheld_total":
                    out["withheld"][sketch] = int(sample.value)
                elif name == "telesketch_gap_covered_packets_total":
                    out["gap_coverage"].setdefault(sketch, {"covered_packets": 0, "skipped_packets": {}})
                    out["gap_coverage"][sketch]["covered_packets"] = int(sample.value)
                elif name == "telesketch_gap_skipped_packets_total":
                    cov = out["gap_coverage"].setdefault(sketch, {"covered_packets": 0, "skipped_packets": {}})
                    cov["skipped_packets"][sample.labels["reason"]] = int(sample.value)
        return out


def _estimates_heavy_hitters(kind_name: str) -> bool:
    """Whether a kind (by its configured name) estimates heavy hitters: answers them and is not exact."""
    kind = KINDS.get(kind_name)
    return kind is not None and "heavy_hitters" in kind.queries and not kind.exact


def _int_keys(sketch_name: str, source: RemoteSource) -> str:
    """How a remote sketch's integer keys read (addresses, or LLM-Sketch fingerprints)."""
    for s in source.stats()["sketches"]:
        if s["name"] == sketch_name and s["kind"] in KINDS:
            return KINDS[s["kind"]].int_keys
    return "ipv4"


# ====================================================================== building
def _hhh_parts(row) -> tuple[int, bytes, int, float]:
    """``(family, prefix bytes, length, estimate)`` of an HHH answer row of either family."""
    family, prefix, length, estimate = hhh_row_parts(row)
    return family, prefix, length, float(estimate)


def _key_json(key, int_keys: str = "ipv4") -> dict:
    return key_json(key, int_keys)


def _prefix_json(family: int, prefix: bytes, length: int, estimate: float) -> dict:
    """An HHH row: ``prefix`` an int for IPv4 (as before IPv6), 32 hex digits for IPv6."""
    value = int.from_bytes(prefix, "big") if family == 4 else prefix.hex()
    return {"family": family, "prefix": value, "length": length, "text": format_prefix(prefix, length),
            "estimate": estimate}


def _section(fn) -> tuple[dict, Any]:
    """Run one query; ``(section header, rows or None)``."""
    try:
        rows, info = fn()
    except Unanswered as exc:
        return {"sketch": None, "combine": None, "error": str(exc)}, None
    head = {"sketch": info["sketch"], "combine": info["combine"], "error": None, "epochs": info["epochs"],
            "packets": info["packets"], "unit": info.get("unit", "packets")}
    for extra in ("before", "int_keys"):
        if extra in info:
            head[extra] = info[extra]
    if info.get("partial"):
        head["partial"] = True
    return head, rows


def _floor_in(error: str | None) -> int | None:
    """The sketch floor named by a refused threshold (``... floor of 240 packets ...``, or bytes for a
    byte-weighted sketch), or None."""
    import re

    found = re.search(r"floor of ([\d,]+) (?:packets|bytes)", error or "")  # bytes: a byte-weighted sketch
    return int(found.group(1).replace(",", "")) if found else None


def _keys_section(source, what: str, last: int, opts: ReportOptions, sketch: str, floors: dict | None) -> dict:
    """One heavy-hitter or changer section (asked at the sketch's floor when phi is below it)."""
    floor = (floors or {}).get(what)
    head, rows = _section(lambda: source.keys(what, last, opts.phi, sketch, floor))
    if rows is None and floors is None and _floor_in(head["error"]) is not None:
        floor = _floor_in(head["error"])
        head, rows = _section(lambda: source.keys(what, last, opts.phi, sketch, floor))
    head.update(phi=opts.phi, threshold=opts.phi * head.get("packets", 0)
                if rows is not None and what == "heavy_hitters" and head.get("unit") != "bytes" else None)
    if floor is not None and rows is not None:
        head.update(threshold=float(floor), floor=floor, asked_threshold=opts.phi * head.get("packets", 0))
    value = "change" if what == "heavy_changers" else "estimate"
    ik = head.pop("int_keys", "ipv4")
    ordered = ranked(rows or [], by_magnitude=what == "heavy_changers")  # ties: IPv4 before IPv6
    head["rows"] = [dict(_key_json(k, ik), **{value: v}) for k, v in ordered]
    head["count"] = len(head["rows"])
    return head


def query_sections(source, opts: ReportOptions, last: int, sketch: str = "", floors: dict | None = None) -> dict:
    """The five answer sections of the report from one source (``sketch`` names one, or default).

    A heavy-hitter or changer threshold (``phi`` of the window) below the sketch's floor is refused
    by the service; the report then asks at the floor and says so (``floor``: packets; the truth is
    asked at the same threshold, ``floors``: ``{section: packets}``).
    """
    out = {}
    for what in ("heavy_hitters", "heavy_changers"):
        out[what] = _keys_section(source, what, last if what == "heavy_hitters" else 1, opts, sketch, floors)
    head, rows = _section(lambda: source.hhh(last, opts.hhh_phi, sketch))
    head.update(phi=opts.hhh_phi, rows=[_prefix_json(*r) for r in sorted(rows or [], key=lambda r: r[0])])
    head["count"] = len(head["rows"])
    out["hhh"] = head
    head, rows = _section(lambda: source.gaps(last, sketch))
    head["events"] = [{"ts_ns": t, "time": time_text(t), "key": k.hex(), "text": key_text(k),
                       "family": key_json(k)["family"], "jump": j, "epoch": e} for t, k, j, e in rows or []]
    head["count"] = len(head["events"])
    out["gaps"] = head
    head, rows = _section(lambda: source.top_flows(opts.flows, last, sketch))
    ik = head.pop("int_keys", "ipv4")
    head.update(k=opts.flows, rows=[dict(_key_json(k, ik), estimate=v) for k, v in ranked(rows or [])])
    out["top_flows"] = head
    return out


def build_report(source, opts: ReportOptions = ReportOptions(), *, mode: str, files=(), target=None,
                 ingest: dict | None = None, epoch_seconds: float | None = None, truth=None) -> dict:
    """The report dict (schema in the module docstring). ``truth``: a LocalSource of the exact kind."""
    stats = source.stats()
    retained = len(stats["epochs"])
    last = min(opts.last or retained, retained) or 1
    report = {
        "schema": SCHEMA,
        "source": {"mode": mode, "files": [str(f) for f in files], "target": target},
        "window": {"last": last, "epochs": [e["epoch"] for e in stats["epochs"]][-last:],
                   "packets": sum(e["packets"] for e in stats["epochs"][-last:]), "epoch_seconds": epoch_seconds,
                   "applied_packets": stats["packets"],
                   "whole_capture": sum(e["packets"] for e in stats["epochs"][-last:]) == stats["packets"]},
        "ingest": dict(ingest or {}, packets=stats["packets"], late_packets=stats["late_packets"],
                       batches=stats["batches"]),
        "sketches": stats["sketches"],
        "notes": [f"sketch {s['name']} ({s['kind']}) not active: {s['note']}" for s in stats["sketches"]
                  if not s["active"]],
        "truth": None,
        "accuracy": None,
    }
    report.update(query_sections(source, opts, last))
    report["ipv6"] = _ipv6_section(source, last)
    # every other sketch estimating heavy hitters too (Hidden Sketch, e.g. one keyed by destination:
    # a flood's victim), no truth
    others = [s["name"] for s in stats["sketches"] if s["active"] and _estimates_heavy_hitters(s["kind"])
              and s["name"] != report["heavy_hitters"]["sketch"]]
    report["more_heavy_hitters"] = [_keys_section(source, "heavy_hitters", last, opts, name, None) for name in others]
    if truth is not None:
        report["truth"] = truth_sections(truth, report, opts, last)
        add_accuracy(report, source, truth, opts, last)
    return report


def truth_sections(truth, report: dict, opts: ReportOptions, last: int) -> dict:
    """The exact answers of the report's sections: from :data:`TRUTH` (packets), and for a section a
    byte-weighted sketch answered (``unit`` "bytes") from :data:`TRUTH_BYTES`, so each section is
    scored against a count of what its sketch counts."""
    floors = raised_floors(report)
    out = query_sections(truth, opts, last, TRUTH, floors=floors)
    by_bytes = [what for what in out if (report.get(what) or {}).get("unit") == "bytes"]
    if by_bytes:
        byte_truth = query_sections(truth, opts, last, TRUTH_BYTES, floors=floors)
        out.update({what: byte_truth[what] for what in by_bytes})
    return out


def _ipv6_section(source, last: int) -> dict | None:
    """The source's IPv6 counters (``None`` when it has none to give, e.g. no metrics URL)."""
    ask = getattr(source, "ipv6", None)
    if ask is None:
        return None
    try:
        return ask(last)
    except OSError as exc:  # a remote /metrics that does not answer: say so, keep the report
        return {"scope": "unavailable", "error": str(exc), "withheld": {}, "gap_coverage": {}}


def raised_floors(sections: dict) -> dict:
    """``{section: floor}`` of the sections asked at their sketch's floor (the truth must match)."""
    return {what: sections[what]["floor"] for what in ("heavy_hitters", "heavy_changers")
            if sections.get(what, {}).get("floor") is not None}


# ====================================================================== accuracy
def truth_specs(sketch_specs: dict[str, dict]) -> dict[str, dict]:
    """Config of the ``exact`` kind matching the configured sketches' keys and gap thresholds:
    :data:`TRUTH`, plus :data:`TRUTH_BYTES` counting bytes when a configured sketch does.

    Each configured kind says what the truth must share (:meth:`Sketch.truth_params
    <telesketch.sketches.core.Sketch.truth_params>`: the Hidden Sketch ``key``, the ResidualSketch
    ``mode``, the GapFilter ``t1``/``t2``, defaults included); the first sketch to name a
    parameter sets it.
    """
    import importlib

    params: dict[str, Any] = {}
    for spec in sketch_specs.values():
        kind = KINDS.get(spec.get("kind"))
        if kind is None:
            continue
        try:
            cls = getattr(importlib.import_module(kind.module), kind.cls)
            wanted = cls.truth_params({k: v for k, v in spec.items() if k not in ("kind", "device")})
        except Exception:  # noqa: BLE001 - a sketch that does not build is skipped by the service too
            continue
        for name, value in wanted.items():
            params.setdefault(name, value)
    specs = {TRUTH: dict(kind="exact", **params)}
    if any(spec.get("weight") == "bytes" for spec in sketch_specs.values()):
        specs[TRUTH_BYTES] = dict(kind="exact", weight="bytes", **params)
    return specs


def _acc(true_keys, reported: dict, truth_values: dict | None) -> dict:
    acc = exact.set_accuracy(true_keys, reported).as_dict()
    if truth_values is not None:
        tp = [k for k in truth_values if k in reported]
        acc["are"] = exact.are({k: abs(truth_values[k]) for k in tp}, {k: abs(reported[k]) for k in tp}, tp) \
            if tp else None
    else:
        acc["are"] = None
    return acc


def _fingerprints(keys: list[bytes]) -> list[int]:
    """LLM-Sketch's stored 32-bit fingerprint of each flow key: of the 13-byte key for IPv4 flows
    (a 37-byte key of two v4-mapped ends is shortened first), of the 37-byte key for IPv6 flows."""
    from telesketch.packets import V4_MAPPED_PREFIX
    from telesketch.sketches.llmsketch import fingerprint

    def stored(key: bytes) -> bytes:
        if len(key) == FLOW_KEY37_BYTES and key[:12] == V4_MAPPED_PREFIX and key[16:28] == V4_MAPPED_PREFIX:
            return key[12:16] + key[28:32] + key[32:]
        return key

    keys = [stored(bytes(k)) for k in keys]
    out: list[int] = [0] * len(keys)
    for width in {len(k) for k in keys}:
        at = [i for i, k in enumerate(keys) if len(k) == width]
        array = np.frombuffer(b"".join(keys[i] for i in at), np.uint8).reshape(-1, width)
        for i, fp in zip(at, fingerprint(array).view("<u4").ravel().tolist()):
            out[i] = fp
    return out


def add_accuracy(report: dict, source, truth, opts: ReportOptions, last: int) -> None:
    """Fill ``report["accuracy"]`` comparing each answered section with ``report["truth"]``."""
    acc: dict[str, Any] = {}
    t = report["truth"]
    for what, value in (("heavy_hitters", "estimate"), ("heavy_changers", "change")):
        if report[what]["error"] is None and t[what]["error"] is None:
            est = {r["key"]: r[value] for r in report[what]["rows"]}
            true = {r["key"]: r[value] for r in t[what]["rows"]}
            acc[what] = _acc(true, est, true)
    if report["hhh"]["error"] is None and t["hhh"]["error"] is None:
        est = {(r["prefix"], r["length"]): r["estimate"] for r in report["hhh"]["rows"]}
        true = {(r["prefix"], r["length"]): r["estimate"] for r in t["hhh"]["rows"]}
        acc["hhh"] = _acc(true, est, true)
    if report["gaps"]["error"] is None and t["gaps"]["error"] is None:
        est = {(e["key"], e["ts_ns"]): 1 for e in report["gaps"]["events"]}
        acc["gaps"] = _acc({(e["key"], e["ts_ns"]) for e in t["gaps"]["events"]}, est, None)
    if report["top_flows"]["error"] is None and t["top_flows"]["error"] is None:
        acc.update(_flow_accuracy(report, source, truth, opts, last))
    report["accuracy"] = acc
    report["by_family"] = family_accuracy(report)


def _family_rows(report: dict, what: str) -> tuple[dict, dict, dict] | None:
    """``(reported {id: 1}, true {id: 1}, {id: family})`` of one section and its truth, ids as the
    accuracy compares them; ``None`` when either side has no answer."""
    sec, t = report.get(what) or {}, (report.get("truth") or {}).get(what) or {}
    if not sec or not t or sec.get("error") or t.get("error"):
        return None
    if what == "gaps":
        ident = lambda r: (r["key"], r["ts_ns"])  # noqa: E731
        rows, true_rows = sec["events"], t["events"]
    elif what == "hhh":
        ident = lambda r: (r["prefix"], r["length"])  # noqa: E731
        rows, true_rows = sec["rows"], t["rows"]
    else:
        ident = lambda r: r["key"]  # noqa: E731
        rows, true_rows = sec["rows"], t["rows"]
    family = {ident(r): r.get("family", 4) for r in true_rows}
    if what == "top_flows" and any(isinstance(r["key"], int) for r in rows):  # fingerprints: name them
        keys = [bytes.fromhex(r["key"]) for r in true_rows]
        fps = _fingerprints(keys)
        family = {fp: r.get("family", 4) for fp, r in zip(fps, true_rows)}
        true_ids = {fp: 1 for fp in fps}
    else:
        true_ids = {ident(r): 1 for r in true_rows}
    for r in rows:
        family.setdefault(ident(r), r.get("family", 4))
    return {ident(r): 1 for r in rows}, true_ids, family


def family_accuracy(report: dict) -> dict:
    """Each answered section against the exact truth, per address family: ``{"4" | "6": {section:
    {"precision", "recall", "f1", "tp", "fp", "fn"}}}`` (a family appears where the truth or the
    answer has a row of it). The demo prints it, so both families' answers are checked."""
    out: dict[str, dict] = {}
    for what in SECTIONS:
        got = _family_rows(report, what)
        if got is None:
            continue
        reported, true, family = got
        for fam in sorted(set(family.values()) - {0}):  # 0: a fingerprint no true flow names
            mine = {k: v for k, v in reported.items() if family.get(k) == fam}
            truth = {k for k in true if family.get(k) == fam}
            out.setdefault(str(fam), {})[what] = exact.set_accuracy(truth, mine).as_dict()
    return out


def family_lines(by_family: dict | None) -> list[str]:
    """The per-family check as a table (section x family: F1 and tp/true), for the demo and report."""
    if not by_family or set(by_family) == {"4"}:
        return []  # one family: the accuracy lines above say it all
    fams = sorted(by_family)
    rows = []
    for what in SECTIONS:
        cells = []
        for fam in fams:
            a = by_family[fam].get(what)
            cells.append("-" if a is None else f"F1 {a['f1']:.3f} ({a['tp']}/{a['tp'] + a['fn']} true, {a['fp']} false)")
        if any(c != "-" for c in cells):
            rows.append((what.replace("_", " "),) + tuple(cells))
    return ["", "Both families against exact truth"] + _table(("answer",) + tuple(f"IPv{f}" for f in fams), rows)


def _flow_accuracy(report: dict, source, truth, opts: ReportOptions, last: int) -> dict:
    """Top-k set accuracy (fingerprints matched when the sketch keeps them) and flow-size ARE."""
    out = {}
    true_top = [(bytes.fromhex(r["key"]), r["estimate"]) for r in report["truth"]["top_flows"]["rows"]]
    reported = {r["key"]: r["estimate"] for r in report["top_flows"]["rows"]}
    fingerprinted = any(isinstance(k, int) for k in reported)
    names = _fingerprints([k for k, _ in true_top]) if fingerprinted else [k.hex() for k, _ in true_top]
    true_map = dict(zip(names, (v for _, v in true_top)))
    out["top_flows"] = _acc(true_map, reported, true_map)
    try:
        exact_kind = TRUTH_BYTES if report["top_flows"].get("unit") == "bytes" else TRUTH
        all_true, _ = truth.top_flows(min(MAX_TOP_K, MAX_FLOW_KEYS), last, exact_kind)
        keys = [bytes(k) for k, _ in all_true]
        if fingerprinted:  # name the reported fingerprints after the true flows they match
            names = dict(zip(_fingerprints(keys), (key_text(k) for k in keys)))
            for r in report["top_flows"]["rows"]:
                r.setdefault("flow", names.get(r["key"], r["text"]))
        est, true, note = _sizes(source, all_true, last, report["top_flows"]["sketch"])
        if true:
            k = min(opts.flows, len(true))
            rel = np.abs(np.asarray(est) - np.asarray(true)) / np.asarray(true)
            out["flow_size"] = {"flows": len(true), "are": float(rel.mean()), "are_top": float(rel[:k].mean()),
                                "k": k}
            if note:
                out["flow_size"]["note"] = note
    except Unanswered:
        pass
    return out


def _sizes(source, all_true: list, last: int, sketch: str) -> tuple[list, list, str]:
    """``(estimated, true sizes, note)`` of the true flows, largest first. A source whose
    flow-size query takes 13-byte keys only (before IPv6 flow keys reached the query layer) is
    asked the IPv4 flows, and the note says so ("" otherwise)."""
    keys = [bytes(k) for k, _ in all_true]
    if not keys:
        return [], [], ""
    try:
        est, _ = source.flow_size(keys, last, sketch)
        return est, [v for _, v in all_true], ""
    except Unanswered as exc:
        ipv4 = [(k, v) for k, (_, v) in zip(keys, all_true) if len(k) == FLOW_KEY_BYTES]
        if len(ipv4) == len(keys) or not ipv4:
            raise
        est, _ = source.flow_size([k for k, _ in ipv4], last, sketch)
        return est, [v for _, v in ipv4], f"IPv4 flows only ({len(keys) - len(ipv4):,} IPv6 flows not asked: {exc})"


def name_fingerprints(report: dict) -> None:
    """With truth at hand, give fingerprint keys of ``top_flows`` their 5-tuple text (``flow``)."""
    truth = report.get("truth")
    rows = report["top_flows"].get("rows", [])
    if not truth or not rows or not any(isinstance(r["key"], int) for r in rows):
        return
    keys = [bytes.fromhex(r["key"]) for r in truth["top_flows"]["rows"]]
    names = dict(zip(_fingerprints(keys), (key_text(k) for k in keys)))
    for r in rows:
        if r["key"] in names:
            r["flow"] = names[r["key"]]


# ====================================================================== text
def _fmt(x: float) -> str:
    return f"{x:,.0f}"


def _acc_line(acc: dict | None) -> str:
    if not acc:
        return ""
    parts = [f"precision {acc['precision']:.3f}", f"recall {acc['recall']:.3f}", f"F1 {acc['f1']:.3f}"]
    if acc.get("are") is not None:
        parts.append(f"ARE {acc['are']:.4f}")
    return "  accuracy: " + ", ".join(parts) + f"  (tp {acc['tp']}, fp {acc['fp']}, fn {acc['fn']})"


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]], indent: str = "  ") -> list[str]:
    if not rows:
        return [indent + "(none)"]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    line = lambda cells: indent + "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                            for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return [line(header), indent + "  ".join("-" * w for w in widths)] + [line(r) for r in rows]


def _truth_lookup(report: dict, what: str, value: str) -> dict:
    t = (report.get("truth") or {}).get(what)
    if not t or t.get("error"):
        return {}
    return {r["key"]: r[value] for r in t["rows"]}


def _on_gpu(sketch: dict) -> str:
    """``", on GPU (cupy)"`` for a sketch that runs on the GPU, else ``""``."""
    return f", on GPU ({sketch.get('backend', '?')})" if sketch.get("device") == "gpu" else ""


def ipv6_lines(section: dict | None) -> list[str]:
    """Text lines saying which packets gap detection covered and how many IPv6 packets were
    withheld from IPv4-only sketches (nothing for a report without the ``ipv6`` section)."""
    if not section:
        return []
    scope = section.get("scope", "")
    if section.get("error"):
        return [f"ipv6       counters unavailable ({section['error']})"]
    withheld = {name: n for name, n in section.get("withheld", {}).items()}
    if withheld:
        parts = ", ".join(f"{name} {n:,}" for name, n in sorted(withheld.items()))
        lines = [f"ipv6       IPv6 packets withheld from IPv4-only sketches ({scope}): {parts}; "
                 "their answers cover IPv4 traffic only"]
    else:
        lines = ["ipv6       every active sketch takes IPv6 packets (none withheld)"]
    for name, cov in sorted(section.get("gap_coverage", {}).items()):
        skipped = {r: n for r, n in cov.get("skipped_packets", {}).items() if n}
        total = cov["covered_packets"] + sum(skipped.values())
        why = (": " + ", ".join(f"{r} {n:,}" for r, n in sorted(skipped.items()))
               + "; no gap is reported for them (IPv6 packets without the sequence field)") if skipped else ""
        where = scope
        ids = cov.get("epochs")
        if ids is not None and len(ids) != section.get("window_epochs", len(ids)):  # say what it counts
            where = (f"epoch {', '.join(map(str, ids))} of the window: the others were restored from snapshots "
                     "written before closed epochs kept it" if ids else "no epoch of the window kept it")
        lines.append(f"gap cover  {name} ({where}): {cov['covered_packets']:,} of {total:,} packets inspected, "
                     f"{sum(skipped.values()):,} skipped{why}")
    return lines


def render_text(report: dict, opts: ReportOptions = ReportOptions()) -> str:
    """The human-readable report (the tables show ``opts.top`` rows; the JSON has them all)."""
    w, ing = report["window"], report["ingest"]
    lines = [f"telesketch report ({report['source']['mode']}): "
             + (", ".join(report["source"]["files"]) or report["source"].get("target") or "")]
    span = f", {w['epoch_seconds']:g} s each" if w.get("epoch_seconds") else ""
    ids = w["epochs"]
    epochs = f"{w['last']} epoch(s) {ids[0] if ids else '-'}..{ids[-1] if ids else '-'}{span}"
    if w.get("whole_capture", True):
        whole = "capture" if report["source"]["mode"] == "analyze" else "stream"
        lines.append(f"window     whole {whole}: {epochs}: {w['packets']:,} packets")
    else:  # say what the window leaves out, and why
        lines.append(f"window     last {epochs}: {w['packets']:,} of {w.get('applied_packets', 0):,} packets "
                     "(older epochs are not retained: keep_epochs; or narrowed by --last)")
    rate = ""
    if ing.get("seconds"):
        rate = (f" in {ing['seconds']:.2f} s: {ing['packets_per_second']:,.0f} packets/s, "
                f"{ing['bytes_per_second'] / 1e6:,.1f} MB/s")
    lines.append(f"ingest     {ing['packets']:,} packets{rate} (late {ing['late_packets']:,}, batches {ing['batches']:,})")
    active = [f"{s['name']} ({s['kind']}, {s['memory_bytes'] / 1024:,.1f} KiB{_on_gpu(s)})"
              for s in report["sketches"] if s["active"]]
    lines.append("sketches   " + (", ".join(active) or "none active"))
    lines += [f"note       {n}" for n in report["notes"]]
    lines += ipv6_lines(report.get("ipv6"))
    acc = report.get("accuracy") or {}
    top = opts.top

    def head(title: str, sec: dict, extra: str = "") -> None:
        lines.append("")
        if sec["error"]:
            lines.append(f"{title}: not answered ({sec['error']})")
            return
        lines.append(f"{title} [sketch {sec['sketch']}, {sec['combine']}]{extra}")
        if sec.get("partial"):
            lines.append("PARTIAL: the sketch's decode could not finish (too little memory for this traffic): "
                         "keys may be missing and some estimates are upper bounds; see `telesketch size`")

    def hh_head(hh: dict) -> None:
        if hh.get("floor") is not None and not hh["error"]:
            spread = (f"; the floor holds per epoch, so a key under it in each of the {len(hh['epochs'])} epochs "
                      "is missed" if len(hh.get("epochs") or []) > 1 else "")
            head("Heavy hitters", hh, f": {hh.get('count', 0)} keys above {hh['floor']:,} packets, the sketch's "
                 f"floor (phi {hh['phi']:g} asks > {hh['asked_threshold']:,.0f}; a smaller expected_epoch_items "
                 f"lowers it{spread})")
        else:
            bound = (" of the window's bytes" if hh.get("unit") == "bytes"
                     else f" (> {hh.get('threshold') or 0:,.0f} packets)")
            head("Heavy hitters", hh, f": {hh.get('count', 0)} keys above phi {hh['phi']:g}{bound}"
                 if not hh["error"] else "")

    hh = report["heavy_hitters"]
    hh_head(hh)
    if not hh["error"]:
        truth = _truth_lookup(report, "heavy_hitters", "estimate")
        rows = [(r["text"], _fmt(r["estimate"])) + ((_fmt(truth[r["key"]]) if r["key"] in truth else "-",) if truth else ())
                for r in hh["rows"][:top]]
        lines += _table(("key", _counted("estimate", hh)) + (("true",) if truth else ()), rows)
        lines.append(_acc_line(acc.get("heavy_hitters"))) if acc.get("heavy_hitters") else None
    for more in report.get("more_heavy_hitters") or []:
        hh_head(more)
        if not more["error"]:
            lines += _table(("key", _counted("estimate", more)), [(r["text"], _fmt(r["estimate"]))
                                                                   for r in more["rows"][:top]])

    hc = report["heavy_changers"]
    head("Heavy changers", hc, f": {hc.get('count', 0)} keys, epoch {hc.get('epochs')} vs {hc.get('before')}"
         + (f", change > {hc['floor']:,} packets (the sketch's floor)" if hc.get("floor") is not None else "")
         if not hc["error"] else "")
    if not hc["error"]:
        truth = _truth_lookup(report, "heavy_changers", "change")
        rows = [(r["text"], f"{r['change']:+,.0f}") + ((f"{truth[r['key']]:+,.0f}" if r["key"] in truth else "-",) if truth else ())
                for r in hc["rows"][:top]]
        lines += _table(("key", _counted("change", hc)) + (("true",) if truth else ()), rows)
        lines.append(_acc_line(acc.get("heavy_changers"))) if acc.get("heavy_changers") else None

    hhh = report["hhh"]
    head("Hierarchical heavy hitters", hhh, f": {hhh.get('count', 0)} prefixes above phi {hhh['phi']:g}"
         if not hhh["error"] else "")
    if not hhh["error"]:
        t = report.get("truth") or {}
        truth = {} if not t or t["hhh"]["error"] else {(r["prefix"], r["length"]): r["estimate"] for r in t["hhh"]["rows"]}
        families = sorted({r.get("family", 4) for r in hhh["rows"]} | {r.get("family", 4) for r in
                                                                      (t.get("hhh") or {}).get("rows") or []})
        for family in families or [4]:  # the IPv4 tree, then the IPv6 tree (when either side has one)
            tree = [r for r in hhh["rows"] if r.get("family", 4) == family]
            ordered = sorted(tree, key=lambda r: -r["estimate"])[:top]
            rows = [(r["text"], _fmt(r["estimate"])) + ((_fmt(truth[(r["prefix"], r["length"])])
                                                         if (r["prefix"], r["length"]) in truth else "-",) if truth else ())
                    for r in ordered]
            if len(families) > 1:
                lines.append(f"  IPv{family} tree: {len(tree)} prefixes")
            lines += _table(("prefix", _counted("discounted", hhh)) + (("true",) if truth else ()), rows)
        lines.append(_acc_line(acc.get("hhh"))) if acc.get("hhh") else None

    gaps = report["gaps"]
    head("Flow gaps", gaps, f": {gaps.get('count', 0)} major gaps" if not gaps["error"] else "")
    if not gaps["error"]:
        rows = [(e["text"], time_text(e["ts_ns"]), str(e["jump"])) for e in gaps["events"][-opts.gap_rows:]]
        if rows:
            lines.append(f"  newest {len(rows)}:")
        lines += _table(("flow", "time (UTC)", "jump"), rows)
        lines.append(_acc_line(acc.get("gaps"))) if acc.get("gaps") else None

    tf = report["top_flows"]
    head("Largest flows", tf)
    if not tf["error"]:
        t = report.get("truth") or {}
        truth = {}
        if t and not t["top_flows"]["error"]:
            truth = {r["text"]: r["estimate"] for r in t["top_flows"]["rows"]}
        rows = []
        for r in tf["rows"][:top]:
            name = r.get("flow", r["text"])
            rows.append((name, _fmt(r["estimate"])) + ((_fmt(truth[name]) if name in truth else "-",) if truth else ()))
        lines += _table(("flow", _counted("estimate", tf)) + (("true",) if truth else ()), rows)
        lines.append(_acc_line(acc.get("top_flows"))) if acc.get("top_flows") else None
        fs = acc.get("flow_size")
        if fs:
            lines.append(f"  flow sizes: ARE {fs['are']:.3f} over {fs['flows']:,} flows, "
                         f"{fs['are_top']:.3f} over the {fs['k']} largest"
                         + (f"; {fs['note']}" if fs.get("note") else ""))
    lines += family_lines(report.get("by_family"))
    return "\n".join(lines)


def _counted(column: str, section: dict) -> str:
    """A count column's header: ``estimate (bytes)`` for a byte-weighted sketch's section; packet
    counts keep the plain header (the section's title line already says packets)."""
    return f"{column} (bytes)" if section.get("unit") == "bytes" else column


def elapsed(start: float) -> float:
    return time.perf_counter() - start
