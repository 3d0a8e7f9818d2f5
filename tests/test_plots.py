"""The report charts: every chart is written, labels are readable, the gap timeline has real dates."""
from __future__ import annotations

import pytest

from telesketch.analyze import analyze
from telesketch.report import ReportOptions
from telesketch.service.config import load_config
from telesketch.traces import generate_capture

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    path = tmp_path_factory.mktemp("plots") / "p.pcap"
    generate_capture(path, packets=40_000, flows=400, seed=21, duration_s=5.0)
    config = load_config(None, {})
    config.sketches = {"gaps": {"kind": "gapfilter_ao"},
                       "hh": {"kind": "hiddensketch", "memory_bytes": 56320, "phi": 1e-3, "expected_epoch_items": 40_000},
                       "hhh": {"kind": "residualsketch", "mode": "byte", "memory_bytes": 32768, "phi": 1e-2,
                               "expected_packets": 40_000},
                       "flows": {"kind": "exact"}}
    rep, _ = analyze([path], config, ReportOptions(phi=1e-3, hhh_phi=1e-2), truth=True)
    return rep


def test_every_chart_is_written(report, tmp_path):
    from telesketch.plots import write_plots

    sweep = [{"sketch": "hh", "kind": "hiddensketch", "query": "heavy_hitters", "memory_bytes": m, "f1": f}
             for m, f in ((28160, 0.8), (56320, 0.95), (112640, 1.0))]
    written = {p.name: p for p in write_plots(report, tmp_path, sweep)}
    assert set(written) == {"heavy_hitters.png", "top_flows.png", "hhh_tree.png", "gap_timeline.png",
                            "accuracy_vs_memory.png"}
    for p in written.values():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_heavy_hitters_are_ranked_with_their_shares(report):
    from telesketch.plots import _heavy_hitters, _pyplot

    plt = _pyplot()
    fig = _heavy_hitters(plt, report)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    rows = sorted(report["heavy_hitters"]["rows"], key=lambda r: -r["estimate"])
    assert labels == [r["text"] for r in rows[:20]]  # largest first, addresses as text
    texts = [t.get_text() for t in ax.texts]
    assert any("%" in t for t in texts)
    plt.close(fig)


def test_hhh_tree_is_indented_under_parents_with_prefix_labels(report):
    from telesketch.plots import _hhh_tree, _pyplot

    plt = _pyplot()
    fig = _hhh_tree(plt, report)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels and all("/" in label for label in labels)
    top_level = [label for label in labels if not label.startswith(" ")]
    nested = [label for label in labels if label.startswith(" ")]
    assert top_level and all("└ " in label for label in nested)
    prefixes = {r["text"] for r in report["hhh"]["rows"]}
    assert {label.replace("└ ", "").strip() for label in labels} <= prefixes
    plt.close(fig)


def test_gap_timeline_has_real_dates(report):
    from telesketch.plots import _gaps, _pyplot

    plt = _pyplot()
    fig = _gaps(plt, report)
    fig.canvas.draw()
    ax = fig.axes[0]
    shown = " ".join([t.get_text() for t in ax.get_xticklabels()] + [ax.xaxis.get_offset_text().get_text(),
                                                                     ax.get_title()])
    assert "2023" in shown and "UTC" in ax.get_xlabel() + ax.get_title()
    plt.close(fig)


def test_hhh_tree_chart_takes_ipv6_rows(report, tmp_path):
    """An HHH section of both families (IPv6 prefixes as 32 hex digits) charts both trees."""
    import copy

    from telesketch.plots import write_plots

    mixed = copy.deepcopy(report)
    mixed["hhh"]["rows"] = list(mixed["hhh"]["rows"]) + [
        {"family": 6, "prefix": "20010db8" + "0" * 24, "length": 32, "text": "2001:db8::/32", "estimate": 900.0},
        {"family": 6, "prefix": "20010db80001" + "0" * 20, "length": 48, "text": "2001:db8:1::/48", "estimate": 400.0}]
    written = {p.name: p for p in write_plots(mixed, tmp_path)}
    assert written["hhh_tree.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
