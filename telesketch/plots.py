"""PNG charts of a report (``telesketch analyze --plot DIR``, ``telesketch demo --plot DIR``).

Charts an operator can put in a report: titles say what and over which window, axes carry units,
bars carry their values.

* ``heavy_hitters.png``: source addresses over the threshold, ranked, with their share of the
  window's packets (and the true count beside each, with truth);
* ``top_flows.png``: the largest flows, ranked, the sketch's estimate beside the true size (with truth);
* ``hhh_tree.png``: the hierarchical heavy hitters as an indented tree: one row per prefix, under
  its nearest reported parent, a bar for its discounted count (the largest 30 and their parents);
* ``gap_timeline.png``: major gaps over packet time with real UTC dates, reported and true;
* ``accuracy_vs_memory.png``: F1 of each sweepable sketch at 1/4x..4x its configured memory,
  the configured size marked (only with a sweep, see :func:`telesketch.analyze.memory_sweep`).

matplotlib is an optional dependency (``pip install 'telesketch[plot]'``); without it
:class:`PlotsUnavailable` says so.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

HHH_ROWS = 30
BLUE, ORANGE, GREEN = "#3b6fd8", "#ef8636", "#2e9d6a"


class PlotsUnavailable(ImportError):
    """matplotlib is not installed."""


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotsUnavailable("--plot needs matplotlib, an optional dependency: "
                               "pip install 'telesketch[plot]' (or pip install matplotlib)") from None
    return plt


def write_plots(report: dict, directory, sweep: list[dict] | None = None) -> list[Path]:
    """Write every chart the report has data for into ``directory``; returns the paths."""
    plt = _pyplot()
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in (("heavy_hitters.png", _heavy_hitters), ("top_flows.png", _top_flows),
                       ("hhh_tree.png", _hhh_tree), ("gap_timeline.png", _gaps)):
        fig = draw(plt, report)
        if fig is not None:
            written.append(_save(plt, fig, out / name))
    if sweep:
        configured = {s["name"]: s.get("memory_bytes", 0) for s in report.get("sketches") or []}
        written.append(_save(plt, _sweep(plt, sweep, configured), out / "accuracy_vs_memory.png"))
    return written


def _window_text(report: dict, section: dict) -> str:
    """``"2023-11-14 22:13 UTC, 1 epoch of 10 s, 300,000 packets"`` for a section's window."""
    epochs = section.get("epochs") or []
    seconds = (report.get("window") or {}).get("epoch_seconds") or 0
    if not epochs or not seconds:
        return f"{section.get('packets', 0):,} packets"
    start = dt.datetime.fromtimestamp(epochs[0] * seconds, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (f"from {start}, {len(epochs)} epoch{'s' if len(epochs) > 1 else ''} of {seconds:g} s, "
            f"{section.get('packets', 0):,} packets")


def _ranked_bars(plt, names, estimates, true, title: str, subtitle: str, total: int, xlabel: str):
    """Horizontal bars, largest on top, each labelled with its value and share of ``total``."""
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(9, 0.38 * len(names) + 1.6))
    h = 0.4 if true is not None else 0.7
    bars = ax.barh(y - (0.2 if true is not None else 0), estimates, height=h, color=BLUE, label="estimate")
    if true is not None:
        ax.barh(y + 0.2, true, height=h, color=ORANGE, label="true count")
        ax.legend(fontsize=8, loc="lower right")
    top = max(list(estimates) + list(true or [])) or 1
    for bar, value in zip(bars, estimates):
        share = f"  ({value / total:.1%})" if total else ""
        ax.text(bar.get_width() + top * 0.01, bar.get_y() + bar.get_height() / 2, f"{value:,.0f}{share}",
                va="center", fontsize=7)
    ax.set_yticks(y, names, fontsize=8, family="monospace")
    ax.invert_yaxis()
    ax.set_xlim(0, top * 1.22)
    ax.set_xlabel(xlabel)
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title(f"{title}\n{subtitle}", fontsize=10, loc="left")
    return fig


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def _truth_rows(report: dict, section: str) -> list[dict]:
    truth = report.get("truth") or {}
    sec = truth.get(section) or {}
    return [] if sec.get("error") else sec.get("rows", [])


def _heavy_hitters(plt, report: dict):
    sec = report.get("heavy_hitters") or {}
    if sec.get("error") or not sec.get("rows"):
        return None
    rows = sorted(sec["rows"], key=lambda r: -r["estimate"])[:20]
    names = [r["text"] for r in rows]
    truth = {r["text"]: r["estimate"] for r in _truth_rows(report, "heavy_hitters")}
    true = [truth.get(n, 0) for n in names] if truth else None
    more = f" (largest 20 of {len(sec['rows'])})" if len(sec["rows"]) > 20 else ""
    return _ranked_bars(plt, names, [r["estimate"] for r in rows], true,
                        f"Heavy hitters: source addresses over {sec.get('threshold', 0):,.0f} packets{more}",
                        f"{sec['sketch']} sketch, {_window_text(report, sec)}", sec.get("packets", 0),
                        "packets (share of the window)")


def _top_flows(plt, report: dict):
    sec = report["top_flows"]
    if sec["error"] or not sec["rows"]:
        return None
    rows = sec["rows"][:15]
    names = [r.get("flow", r["text"]) for r in rows]
    truth = {r["text"]: r["estimate"] for r in _truth_rows(report, "top_flows")}
    true = [truth.get(n, 0) for n in names] if truth else None
    return _ranked_bars(plt, names, [r["estimate"] for r in rows], true, f"Largest flows (top {len(rows)})",
                        f"{sec['sketch']} sketch, {_window_text(report, sec)}", sec.get("packets", 0),
                        "packets (share of the window)")


def _hhh_tree(plt, report: dict):
    from telesketch.presenter import hhh_rows
    from telesketch.service.status_page import _largest_with_ancestors, _tree_order

    sec = report["hhh"]
    if sec["error"] or not sec["rows"]:
        return None
    items = hhh_rows([(r.get("family", 4), bytes.fromhex(r["prefix"]) if isinstance(r["prefix"], str) else r["prefix"],
                       r["length"], r["estimate"]) for r in sec["rows"]])
    rows = _tree_order(_largest_with_ancestors(items, HHH_ROWS))
    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(rows) + 1.6))
    top = max(r["estimate"] for r in rows) or 1
    colors = plt.get_cmap("viridis")(np.linspace(0.15, 0.75, max(r["depth"] for r in rows) + 1))
    ax.barh(y, [r["estimate"] for r in rows], height=0.7, color=[colors[r["depth"]] for r in rows])
    for i, r in enumerate(rows):
        ax.text(r["estimate"] + top * 0.01, i, f"{r['estimate']:,.0f}", va="center", fontsize=7)
    ax.set_yticks(y, ["    " * r["depth"] + ("└ " if r["depth"] else "") + r["prefix"] for r in rows],
                  fontsize=8, family="monospace")
    for label in ax.get_yticklabels():
        label.set_horizontalalignment("left")
    ax.tick_params(axis="y", pad=max(len(t.get_text()) for t in ax.get_yticklabels()) * 5.2, length=0)
    ax.invert_yaxis()
    ax.set_xlim(0, top * 1.15)
    ax.set_xlabel("discounted packets (not counted again in the prefixes above)")
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.spines[["top", "right"]].set_visible(False)
    shown = f"the largest {HHH_ROWS} of {len(items)} and their parents" if len(items) > len(rows) else \
        f"all {len(items)}"
    ax.set_title(f"Hierarchical heavy hitters: source prefixes over {sec.get('phi', 0):g} of the packets ({shown})\n"
                 f"{sec['sketch']} sketch, {_window_text(report, sec)}", fontsize=10, loc="left")
    return fig


def _gaps(plt, report: dict):
    import matplotlib.dates as mdates

    sec = report["gaps"]
    if sec["error"] or not sec["events"]:
        return None
    ts = np.array([e["ts_ns"] for e in sec["events"]], np.int64)
    true = np.array([e["ts_ns"] for e in ((report.get("truth") or {}).get("gaps") or {}).get("events", [])], np.int64)
    start, end = int(min(ts.min(), true.min() if len(true) else ts.min())), \
        int(max(ts.max(), true.max() if len(true) else ts.max()))
    span_s = max((end - start) / 1e9, 1e-3)
    bin_s = next((b for b in (0.1, 0.5, 1, 5, 10, 60, 300, 900, 3600) if span_s / b <= 200), 3600.0)
    edges_ns = np.arange(start - start % int(bin_s * 1e9), end + int(bin_s * 1e9), int(bin_s * 1e9), dtype=np.int64)
    to_dates = lambda ns: [dt.datetime.fromtimestamp(v / 1e9, dt.timezone.utc) for v in ns]  # noqa: E731
    fig, ax = plt.subplots(figsize=(9, 3.4))
    counts, _ = np.histogram(ts, edges_ns)
    ax.stairs(counts, to_dates(edges_ns), fill=True, alpha=0.6, color=BLUE, label=f"reported ({sec['sketch']})")
    if len(true):
        true_counts, _ = np.histogram(true, edges_ns)
        ax.stairs(true_counts, to_dates(edges_ns), color="black", linewidth=1, label="true")
    locator = mdates.AutoDateLocator(tz=dt.timezone.utc)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=dt.timezone.utc))
    ax.set_xlabel("packet time (UTC)")
    ax.set_ylabel(f"major gaps per {bin_s:g} s")
    ax.spines[["top", "right"]].set_visible(False)
    day = to_dates([start])[0].strftime("%Y-%m-%d %H:%M:%S UTC")
    ax.set_title(f"Flow gaps over time: {len(ts):,} reported" + (f", {len(true):,} true" if len(true) else "")
                 + f"\nfrom {day}, {span_s:,.1f} s of traffic", fontsize=10, loc="left")
    ax.legend(fontsize=8)
    return fig


QUERY_NAMES = {"heavy_hitters": "heavy hitters", "hhh": "hierarchical heavy hitters", "gaps": "flow gaps"}


def _sweep(plt, sweep: list[dict], configured: dict[str, int] | None = None):
    """F1 against memory, one panel per sketch; ``configured``: sketch name -> its configured
    bytes, marked (default: the sweep's middle point, its 1x factor)."""
    names = sorted({r["sketch"] for r in sweep})
    fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 3.4), sharey=True, squeeze=False)
    for ax, name in zip(axes[0], names):
        rows = sorted((r for r in sweep if r["sketch"] == name), key=lambda r: r["memory_bytes"])
        kib = [r["memory_bytes"] / 1024 for r in rows]
        ax.plot(kib, [r["f1"] for r in rows], marker="o", color=BLUE)
        mark = (configured or {}).get(name) or rows[len(rows) // 2]["memory_bytes"]
        ax.axvline(mark / 1024, color=ORANGE, linestyle="--", linewidth=1)
        ax.annotate(f"configured\n{mark / 1024:,.0f} KiB", (mark / 1024, 0.05), color=ORANGE, fontsize=7,
                    ha="center", backgroundcolor="white")
        for x, r in zip(kib, rows):
            ax.annotate(f"{r['f1']:.2f}", (x, r["f1"]), textcoords="offset points", xytext=(0, 6), ha="center",
                        fontsize=7)
        ax.set_xscale("log", base=2)
        ax.set_xticks(kib, [f"{k:,.0f}" if k >= 10 else f"{k:.1f}" for k in kib], fontsize=7)
        ax.minorticks_off()
        ax.set_xlabel("sketch memory (KiB)")
        ax.set_ylim(0, 1.1)
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
        ax.set_title(f"{QUERY_NAMES.get(rows[0]['query'], rows[0]['query'])}\n{name} ({rows[0]['kind']})", fontsize=9)
    axes[0][0].set_ylabel("F1 score against exact counts")
    fig.suptitle("Accuracy vs memory: how much memory each sketch needs on this capture", fontsize=10, x=0.02,
                 ha="left")
    return fig
