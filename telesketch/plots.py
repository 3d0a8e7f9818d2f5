"""PNG charts of a report (``telesketch analyze --plot DIR``, ``telesketch demo --plot DIR``).

* ``top_flows.png``: the largest flows, the sketch's estimate beside the true size (with truth);
* ``hhh_tree.png``: the hierarchical heavy hitters as an icicle over the IPv4 space: one row per
  prefix length, each prefix a bar over the addresses it covers, shaded by its discounted count;
* ``gap_timeline.png``: major gaps per 100 ms of packet time, reported and true;
* ``accuracy_vs_memory.png``: F1 of each sweepable sketch at 1/4x..4x its configured memory
  (only with a sweep, see :func:`telesketch.analyze.memory_sweep`).

matplotlib is an optional dependency (``pip install 'telesketch[plot]'``); without it
:class:`PlotsUnavailable` says so.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


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
    for name, draw in (("top_flows.png", _top_flows), ("hhh_tree.png", _hhh_tree), ("gap_timeline.png", _gaps)):
        fig = draw(plt, report)
        if fig is not None:
            written.append(_save(plt, fig, out / name))
    if sweep:
        written.append(_save(plt, _sweep(plt, sweep), out / "accuracy_vs_memory.png"))
    return written


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def _truth_rows(report: dict, section: str) -> list[dict]:
    truth = report.get("truth") or {}
    sec = truth.get(section) or {}
    return [] if sec.get("error") else sec.get("rows", [])


def _top_flows(plt, report: dict):
    sec = report["top_flows"]
    if sec["error"] or not sec["rows"]:
        return None
    rows = sec["rows"][:15]
    names = [r.get("flow", r["text"]) for r in rows]
    true = {r["text"]: r["estimate"] for r in _truth_rows(report, "top_flows")}
    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.4))
    ax.barh(y - 0.2 if true else y, [r["estimate"] for r in rows], height=0.4 if true else 0.7,
            label=f"estimate ({sec['sketch']})", color="#3b75af")
    if true:
        ax.barh(y + 0.2, [true.get(n, 0) for n in names], height=0.4, label="true", color="#ef8636")
    ax.set_yticks(y, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("packets")
    ax.set_title("Largest flows")
    ax.legend(fontsize=8)
    return fig


def _hhh_tree(plt, report: dict):
    sec = report["hhh"]
    if sec["error"] or not sec["rows"]:
        return None
    rows = sec["rows"]
    lengths = sorted({r["length"] for r in rows})
    level = {n: i for i, n in enumerate(lengths)}
    top = max(r["estimate"] for r in rows) or 1
    fig, ax = plt.subplots(figsize=(9, 1.0 + 0.6 * len(lengths)))
    cmap = plt.get_cmap("viridis")
    for r in rows:
        width = 2.0 ** (32 - r["length"])
        # a /32 is invisible at this scale: give every bar at least 0.2 % of the axis
        shown = max(width, 2.0 ** 32 * 0.002)
        ax.barh(level[r["length"]], shown, left=r["prefix"], height=0.8, color=cmap(r["estimate"] / top),
                edgecolor="black", linewidth=0.3)
    for r in sorted(rows, key=lambda r: -r["estimate"])[:8]:
        ax.text(r["prefix"], level[r["length"]], f" {r['text']}", va="center", fontsize=6, color="white")
    ax.set_yticks(range(len(lengths)), [f"/{n}" for n in lengths])
    ax.set_xlim(0, 2.0 ** 32)
    ax.set_xticks([i * 2 ** 29 for i in range(9)], [f"{i * 32}.0.0.0" for i in range(8)] + ["255.255.255.255"],
                  fontsize=7)
    ax.invert_yaxis()
    ax.set_title(f"Hierarchical heavy hitters ({len(rows)} prefixes, colour = discounted count, max {top:,.0f})")
    return fig


def _gaps(plt, report: dict):
    sec = report["gaps"]
    if sec["error"] or not sec["events"]:
        return None
    ts = np.array([e["ts_ns"] for e in sec["events"]], np.float64)
    true = [e["ts_ns"] for e in ((report.get("truth") or {}).get("gaps") or {}).get("events", [])]
    start = min([ts.min()] + true)
    end = max([ts.max()] + true)
    bins = np.arange(0, (end - start) / 1e9 + 0.1, 0.1)
    if len(bins) < 2:
        bins = np.array([0.0, 0.1])
    if len(bins) > 2000:  # long captures: at most 2000 bins
        bins = np.linspace(0, (end - start) / 1e9, 2001)
    fig, ax = plt.subplots(figsize=(9, 3))
    ax.hist((ts - start) / 1e9, bins=bins, histtype="stepfilled", alpha=0.6, label=f"reported ({sec['sketch']})")
    if true:
        ax.hist((np.array(true, np.float64) - start) / 1e9, bins=bins, histtype="step", color="black", label="true")
    ax.set_xlabel("seconds since the first gap")
    ax.set_ylabel(f"major gaps per {bins[1] - bins[0]:.2g} s")
    ax.set_title(f"Flow gaps: {len(ts):,} reported" + (f", {len(true):,} true" if true else ""))
    ax.legend(fontsize=8)
    return fig


def _sweep(plt, sweep: list[dict]):
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in sorted({r["sketch"] for r in sweep}):
        rows = sorted((r for r in sweep if r["sketch"] == name), key=lambda r: r["memory_bytes"])
        ax.plot([r["memory_bytes"] / 1024 for r in rows], [r["f1"] for r in rows], marker="o",
                label=f"{name} ({rows[0]['kind']}: {rows[0]['query']})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("memory (KiB)")
    ax.set_ylabel("F1 against exact truth")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.set_title("Accuracy vs memory")
    ax.legend(fontsize=7)
    return fig
