"""The read-only status page at ``/`` of the HTTP port: server-rendered HTML with inline SVG.

No JavaScript, no build step, no external assets: the page is one HTML document that reloads itself
every :data:`REFRESH_S` seconds (``<meta http-equiv="refresh">``). It shows what an operator checks
first: the open epoch and its packet-clock time, counters, ingest rate per retained epoch (SVG bars),
and the current window's answers (heavy hitters, the HHH tree, top flows, gap events per epoch),
each from the same query engine as ``/api/v1``. A section whose sketch cannot answer shows the
reason instead of the table.
"""
from __future__ import annotations

import datetime as dt
import html
from typing import Protocol, runtime_checkable

from telesketch.errors import TelesketchError
from telesketch.presenter import key_text, ranked
from telesketch.service.epochs import EpochManager
from telesketch.service.queries import QueryEngine, WindowSpec

REFRESH_S = 10
TOP_ROWS = 10
HHH_ROWS = 24


@runtime_checkable
class StatusSource(Protocol):
    """What the page reads from the service (:class:`telesketch.service.server.Service` is one):
    ``stats()`` for the counters and epochs, ``queries`` for the answers, ``manager`` for the epoch
    length, the IPv6 withheld counts and the GapFilter coverage of the open epoch."""

    manager: EpochManager
    queries: QueryEngine

    def stats(self) -> dict: ...

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1d2330;background:#f6f7f9}
h1{font-size:20px;margin:0 0 .2em}h2{font-size:16px;margin:0 0 .5em}
.sub{color:#5b6475;margin-bottom:1em}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(440px,1fr));gap:14px}
.card{background:#fff;border:1px solid #dde1e8;border-radius:6px;padding:12px 14px}
.kv{display:flex;flex-wrap:wrap;gap:18px}.kv div{min-width:110px}.kv b{display:block;font-size:18px}
table{border-collapse:collapse;width:100%}td,th{padding:2px 6px;text-align:left;white-space:nowrap}
th{color:#5b6475;font-weight:600;border-bottom:1px solid #dde1e8}td.n{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#8a5a00}.mono{font-family:ui-monospace,monospace;font-size:13px}
"""


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _when(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _bar(value: float, top: float, width: int = 160, color: str = "#3b6fd8") -> str:
    """An inline SVG bar ``value / top`` of ``width`` pixels."""
    w = 0 if top <= 0 else max(1, round(width * value / top))
    return (f'<svg width="{width}" height="12" role="img" aria-label="{value:,.0f}">'
            f'<rect width="{width}" height="12" fill="#eef1f6"/><rect width="{w}" height="12" fill="{color}"/></svg>')


def _table(header: tuple[str, ...], rows: list[tuple], bars: int | None = None) -> str:
    """Rows of (text, ..., number); ``bars``: index of the numeric column drawn as a bar too."""
    if not rows:
        return "<p>(no rows in this window)</p>"
    top = max((float(r[bars]) for r in rows), default=0.0) if bars is not None else 0.0
    out = ["<table><tr>" + "".join(f"<th>{_esc(h)}</th>" for h in header) + ("<th></th>" if bars is not None else "")
           + "</tr>"]
    for row in rows:
        cells = "".join(f'<td class="n">{c:,.0f}</td>' if isinstance(c, (int, float)) else f'<td class="mono">{c}</td>'
                        for c in row)
        out.append(f"<tr>{cells}{'<td>' + _bar(float(row[bars]), top) + '</td>' if bars is not None else ''}</tr>")
    return "".join(out) + "</table>"


def _rate_chart(epochs: list[dict], epoch_seconds: float, width: int = 420, height: int = 120) -> str:
    """Packets/s per retained epoch as SVG columns, labelled with the epochs' start times."""
    if not epochs:
        return "<p>(nothing ingested yet)</p>"
    rates = [e["packets"] / epoch_seconds for e in epochs]
    top = max(rates) or 1.0
    step = width / len(epochs)
    parts = [f'<svg width="{width}" height="{height + 34}" role="img" aria-label="ingest rate per epoch">']
    for i, (e, rate) in enumerate(zip(epochs, rates)):
        h = round((height - 14) * rate / top)
        x = i * step + 2
        color = "#3b6fd8" if e["closed"] else "#8fb0ee"
        parts.append(f'<rect x="{x:.1f}" y="{height - h}" width="{max(step - 4, 1):.1f}" height="{h}" fill="{color}">'
                     f'<title>epoch {e["epoch"]}: {rate:,.0f} packets/s</title></rect>')
        parts.append(f'<text x="{x + step / 2 - 2:.1f}" y="{height - h - 3}" font-size="10" text-anchor="middle">'
                     f'{rate:,.0f}</text>')
        label = _when(e["start_ns"])[11:19]
        parts.append(f'<text x="{x + step / 2 - 2:.1f}" y="{height + 14}" font-size="10" text-anchor="middle">'
                     f'{label}</text>')
    first, last = _when(epochs[0]["start_ns"])[:10], _when(epochs[-1]["start_ns"])[:10]
    day = first if first == last else f"{first} to {last}"
    parts.append(f'<text x="0" y="{height + 30}" font-size="10" fill="#5b6475">packets/s per epoch, UTC {day} '
                 f'(light: the open epoch)</text></svg>')
    return "".join(parts)


def _section(title: str, body) -> str:
    try:
        content = body()
    except TelesketchError as exc:
        content = f'<p class="note">{_esc(exc)}</p>'
    return f'<div class="card"><h2>{_esc(title)}</h2>{content}</div>'


def _hhh_tree(rows) -> str:
    from telesketch.presenter import hhh_rows

    items = hhh_rows(rows)
    if not items:
        return "<p>(no prefixes over the threshold in this window)</p>"
    top = max(r["estimate"] for r in items) or 1.0
    out = ["<table><tr><th>prefix (indented under its parent)</th><th>discounted packets</th><th></th></tr>"]
    ordered = _tree_order(_largest_with_ancestors(items, HHH_ROWS))
    for r in ordered:
        pad = 1.2 * r["depth"]
        out.append(f'<tr><td class="mono" style="padding-left:{pad + 0.4:.1f}em">{_esc(r["prefix"])}</td>'
                   f'<td class="n">{r["estimate"]:,.0f}</td><td>{_bar(r["estimate"], top, 120, "#2e9d6a")}</td></tr>')
    more = f"<p>{len(items) - len(ordered)} smaller prefixes not shown: /api/v1/hhh</p>" if len(items) > len(ordered) else ""
    return "".join(out) + "</table>" + more


def _largest_with_ancestors(items: list[dict], n: int) -> list[dict]:
    """The ``n`` largest prefixes and every prefix above them (so the tree stays connected)."""
    by_prefix = {r["prefix"]: r for r in items}
    keep: dict[str, dict] = {}
    for r in sorted(items, key=lambda r: -r["estimate"])[:n]:
        while r is not None and r["prefix"] not in keep:
            keep[r["prefix"]] = r
            r = by_prefix.get(r["parent"])
    return list(keep.values())


def _address_order(row: dict) -> tuple[int, int]:
    """Siblings by address, the IPv4 tree before the IPv6 one (``value``: an int for IPv4, 32 hex
    digits for IPv6, see :func:`telesketch.presenter.hhh_rows`)."""
    value = row["value"]
    return row.get("family", 4), int(value, 16) if isinstance(value, str) else int(value)


def _tree_order(items: list[dict]) -> list[dict]:
    """Depth-first order: each prefix right under its parent, siblings by address."""
    children: dict[str, list[dict]] = {}
    for r in items:
        children.setdefault(r["parent"], []).append(r)
    out: list[dict] = []

    def walk(parent: str) -> None:
        for r in sorted(children.get(parent, []), key=_address_order):
            out.append(r)
            walk(r["prefix"])

    walk("")
    return out


def _ipv6_counters(manager: EpochManager) -> list[tuple[str, object]]:
    """IPv6 packets withheld from IPv4-only sketches (since start) and, per GapFilter, the open
    epoch's packets inspected for gaps out of all it saw (IPv6 ones lack the sequence field)."""
    from telesketch.service.metrics import gap_coverage, sum_coverage

    out: list[tuple[str, object]] = []
    withheld = sum(manager.sketchset.ipv6_withheld.values())
    if withheld:
        out.append(("IPv6 withheld (IPv4-only sketches)", withheld))
    open_id = manager.open.id if manager.open is not None else None
    for name, per in sorted(gap_coverage(manager).items()):
        cov = sum_coverage([per[open_id]] if open_id in per else [])
        seen = cov["covered_packets"] + sum(cov["skipped_packets"].values())
        out.append((f"gap-checked ({name})", f"{cov['covered_packets']:,} of {seen:,}"))
    return out


def render_status_page(service: StatusSource) -> str:
    """The whole page as an HTML string (the handler encodes it as UTF-8)."""
    stats = service.stats()
    q = service.queries
    window = WindowSpec(last=1)
    epochs = stats["epochs"]
    open_epoch = next((e for e in epochs if not e["closed"]), None)
    clock = _when(open_epoch["start_ns"]) if open_epoch else "no epoch yet"
    seconds = stats["epoch_seconds"]
    latest_rate = (epochs[-1]["packets"] / seconds) if epochs else 0.0
    counters = [("packets", stats["packets"]), ("batches", stats["batches"]), ("late packets", stats["late_packets"]),
                ("rejected batches", stats["rejected_batches"]), ("duplicate batches", stats["duplicate_batches"]),
                ("queue", f'{stats["queue_depth"]}/{stats["queue_capacity"]}'),
                ("epochs retained", len(epochs)), ("latest epoch rate", f"{latest_rate:,.0f} pkt/s")]
    counters += _ipv6_counters(service.manager)
    kv = "".join(f"<div>{_esc(k)}<b>{v:,}</b></div>" if isinstance(v, int) else f"<div>{_esc(k)}<b>{_esc(v)}</b></div>"
                 for k, v in counters)
    notes = "".join(f'<p class="note">{_esc(n)}</p>' for n in stats.get("notes", []))

    def heavy_hitters():
        a = q.heavy_hitters(window)
        rows = ranked(a.rows)[:TOP_ROWS]  # mixed families: ties IPv4 before IPv6
        return _table(("key", "packets"), [(_esc(key_text(k, a.int_keys)), float(v)) for k, v in rows], bars=1)

    def top_flows():
        a = q.top_flows(window, TOP_ROWS)
        return _table(("flow", "packets"), [(_esc(key_text(k, a.int_keys)), float(v)) for k, v in a.rows], bars=1)

    def gaps():
        a = q.gaps(WindowSpec(last=max(1, len(epochs))), "", 0, with_rows=False)  # counts only
        rows = [(_esc(_when(e * service.manager.epoch_ns)), float(n)) for e, n in a.extra["per_epoch"].items()]
        return _table(("epoch start", "gap events"), rows, bars=1)

    from telesketch import __version__

    sections = [
        f'<div class="card"><h2>Ingest</h2><div class="kv">{kv}</div>{notes}</div>',
        f'<div class="card"><h2>Ingest rate</h2>{_rate_chart(epochs, seconds)}</div>',
        _section("Heavy hitters (open epoch, by source address)", heavy_hitters),
        _section("Hierarchical heavy hitters (open epoch, source prefixes)", lambda: _hhh_tree(q.hhh(window).rows)),
        _section("Top flows (open epoch)", top_flows),
        _section("Flow gap events per epoch", gaps),
    ]
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="refresh" content="{REFRESH_S}"><title>telesketch status</title>'
            f'<style>{_STYLE}</style></head><body>'
            f'<h1>telesketch</h1><div class="sub">version {_esc(__version__)} &middot; open epoch '
            f'{stats["open_epoch"]} &middot; packet clock {_esc(clock)} &middot; refreshes every {REFRESH_S} s</div>'
            f'<div class="grid">{"".join(sections)}</div></body></html>')
