"""``telesketch size CAPTURE``: how much memory each configured sketch needs for this traffic.

Each sweepable configured sketch (Hidden Sketch heavy hitters, ResidualSketch HHH, GapFilter gaps;
see :data:`telesketch.analyze.SWEEP_KINDS`) runs at ``factors`` x its configured ``memory_bytes``
against exact truth on the captures, in one pass (:func:`telesketch.analyze.memory_sweep`: the
service's own epochs, windows and queries). The advice for a sketch is the **smallest memory on
that grid whose F1 reaches the target** (0.95 by default); ``None`` when no point reaches it (the
grid should go higher). A memory a sketch refuses (Hidden Sketch below its second stage) is left
out of the grid. A sketch configured with ``weight = "bytes"`` is sized by its byte F1: its keys
above phi of the window's bytes against the exact byte truth (``unit`` "bytes" in the advice).

A ResidualSketch's points also name the layout it ran with at that memory (``layout``: ``paper``, or what
``layout = "tuned"`` chose there: ``paper``, ``16-24`` or ``flat``; :mod:`telesketch.sketches.residual_layout`);
``layout`` (``--layout``) runs every configured ResidualSketch with that layout instead of its configured one.

The accuracy-vs-memory chart is ``accuracy_vs_memory.png`` (``--plot DIR``), the same chart as
``telesketch analyze --plot``, with the target line.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

from telesketch.analyze import memory_sweep
from telesketch.report import ReportOptions
from telesketch.service.config import ServiceConfig

#: memory grid, as multiples of each sketch's configured memory: 1/8x .. 8x in sqrt(2) steps
SIZE_FACTORS = tuple(round(2 ** (k / 2), 3) for k in range(-6, 7))
DEFAULT_TARGET = 0.95


@dataclass
class SizingAdvice:
    """One sketch's sweep and the memory it needs.

    ``points``: ``[{"memory_bytes", "f1", "precision", "recall"}]`` by memory; ``memory_bytes``:
    the smallest of them with ``f1 >= target`` (``None`` if none); ``configured_bytes``: what
    the configuration gives it now.
    """

    sketch: str
    kind: str
    query: str
    target: float
    configured_bytes: int
    memory_bytes: int | None
    points: list[dict] = field(default_factory=list)
    unit: str = "packets"  #: what the sketch counts, and so what its F1 is scored against

    @property
    def verdict(self) -> str:
        if self.memory_bytes is None:
            best = max(self.points, key=lambda p: p["f1"], default=None)
            top = f"; best F1 {best['f1']:.3f} at {best['memory_bytes']:,} bytes" if best else ""
            f1s = [p["f1"] for p in self.points]
            if len(f1s) >= 3 and max(f1s) - min(f1s) < 0.01:
                return (f"no memory on the grid reaches F1 {self.target:g}{top}, and F1 does not change with "
                        "memory: something else limits it (e.g. a threshold set for other traffic: Hidden "
                        "Sketch's expected_epoch_items, ResidualSketch's threshold)")
            return f"no memory on the grid reaches F1 {self.target:g}{top}: try a larger grid"
        ratio = self.memory_bytes / self.configured_bytes if self.configured_bytes else float("nan")
        change = "enough" if ratio <= 1 else "too small"
        return (f"needs {self.memory_bytes:,} bytes ({self.memory_bytes / 1024:,.1f} KiB) for F1 >= {self.target:g}; "
                f"configured {self.configured_bytes:,} bytes is {change} ({ratio:.2f}x)")


def pick_memory(points: list[dict], target: float) -> int | None:
    """The smallest ``memory_bytes`` among ``points`` whose ``f1`` is at least ``target``."""
    passing = [p["memory_bytes"] for p in points if p["f1"] >= target]
    return min(passing) if passing else None


def with_layout(config: ServiceConfig, layout: str | None) -> ServiceConfig:
    """``config`` with every ResidualSketch's ``layout`` set to ``layout`` (a copy; ``None``: ``config`` itself)."""
    if layout is None:
        return config
    from telesketch.sketches.residual_layout import LAYOUTS

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    out = copy.copy(config)
    out.sketches = {name: dict(spec, layout=layout) if spec.get("kind") == "residualsketch" else spec
                    for name, spec in config.sketches.items()}
    return out


def layout_at(spec: dict, memory_bytes: int) -> str | None:
    """The layout a ResidualSketch ``spec`` runs with at ``memory_bytes`` (None for other kinds)."""
    if spec.get("kind") != "residualsketch":
        return None
    from telesketch.sketches.residualsketch import ResidualSketchParams

    fields = set(ResidualSketchParams.__dataclass_fields__)
    params = {k: v for k, v in spec.items() if k in fields}
    return ResidualSketchParams(**dict(params, memory_bytes=memory_bytes)).chosen_layout.name


def size_sketches(files, config: ServiceConfig, opts: ReportOptions = ReportOptions(),
                  target: float = DEFAULT_TARGET, factors=SIZE_FACTORS, batch_size: int = 65536,
                  layout: str | None = None) -> list[SizingAdvice]:
    """Sweep every sweepable configured sketch over ``factors`` x its memory; advice per sketch. ``layout``:
    run every ResidualSketch with this layout (``paper`` / ``tuned``) instead of its configured one."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target F1 must be in (0, 1], got {target}")
    if not factors or any(f <= 0 for f in factors):
        raise ValueError(f"memory factors must be positive, got {factors}")
    config = with_layout(config, layout)
    rows = memory_sweep(files, config, opts, batch_size=batch_size, factors=tuple(sorted(set(factors))))
    from telesketch.analyze import _configured_memory

    out = []
    for name in dict.fromkeys(r["sketch"] for r in rows):
        mine = sorted((r for r in rows if r["sketch"] == name), key=lambda r: r["memory_bytes"])
        points = [{k: r[k] for k in ("memory_bytes", "f1", "precision", "recall")} for r in mine]
        for p, r in zip(points, mine):
            chosen = layout_at(config.sketches[name], r.get("spec_memory_bytes") or r["memory_bytes"])
            if chosen is not None:
                p["layout"] = chosen
        out.append(SizingAdvice(name, mine[0]["kind"], mine[0]["query"], target,
                                int(_configured_memory(config.sketches[name]) or 0), pick_memory(points, target), points,
                                mine[0].get("unit", "packets")))
    return out


def sweep_rows(advice: list[SizingAdvice]) -> list[dict]:
    """The sweep as :func:`telesketch.plots.write_plots` takes it (one row per sketch and memory)."""
    return [{"sketch": a.sketch, "kind": a.kind, "query": a.query, **p} for a in advice for p in a.points]


def render(advice: list[SizingAdvice]) -> str:
    """Text: per sketch, its F1 / precision / recall at each memory and the verdict."""
    if not advice:
        return "no sweepable sketch configured (Hidden Sketch, ResidualSketch and GapFilter are)"
    lines = []
    for a in advice:
        lines.append(f"{a.sketch} ({a.kind}, {a.query} by {a.unit}): {a.verdict}")
        layouts = any("layout" in p for p in a.points)
        lines.append(f"  {'KiB':>9}  {'F1':>6}  {'precision':>9}  {'recall':>6}" + (f"  {'layout':>6}" if layouts else ""))
        for p in a.points:
            mark = "  <- smallest reaching the target" if p["memory_bytes"] == a.memory_bytes else ""
            lay = f"  {p.get('layout', ''):>6}" if layouts else ""
            lines.append(f"  {p['memory_bytes'] / 1024:9.1f}  {p['f1']:6.3f}  {p['precision']:9.3f}  {p['recall']:6.3f}"
                         f"{lay}{mark}")
        lines.append("")
    return "\n".join(lines).rstrip()


def write_plot(advice: list[SizingAdvice], directory):
    """``accuracy_vs_memory.png`` in ``directory``: F1 against memory per sketch, the target dashed.
    Needs matplotlib (``telesketch[plot]``)."""
    from pathlib import Path

    from telesketch import plots

    plt = plots._pyplot()
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    fig = plots._sweep(plt, sweep_rows(advice))
    ax = fig.axes[0]
    for target in sorted({a.target for a in advice}):
        ax.axhline(target, color="grey", linestyle="--", linewidth=1)
    ax.set_title("Accuracy vs memory (telesketch size)")
    return plots._save(plt, fig, out / "accuracy_vs_memory.png")
