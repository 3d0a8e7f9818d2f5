"""Heavy hitters by destination vs by source on a SYN flood with spoofed sources (issue 17).

``telesketch analyze`` with one Hidden Sketch (default parameters: 55 KiB, phi 1e-4) keyed by
``src_ip`` and then by ``dst_ip``, each against the ``exact`` kind over the same epochs; the whole
capture in one window. Prints the top rows and precision / recall / F1 per phi, plus the wall time
of each analysis (ratios within one run only: the machine is shared).

    .venv/bin/python benchmarks/bench_victims.py [--trace PATH] [--phi 0.01 0.001]
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from common import machine

from telesketch.analyze import WHOLE_CAPTURE, analyze
from telesketch.report import ReportOptions
from telesketch.service.config import load_config

#: ../shared/traces beside the checkout, or $TELESKETCH_SHARED_TRACES (as the tests)
TRACES = Path(os.environ.get("TELESKETCH_SHARED_TRACES") or Path(__file__).resolve().parents[2] / "shared" / "traces")
DEFAULT_TRACE = TRACES / "stopddos_pkt.TCP.synflood.spoofed.pcap"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    ap.add_argument("--phi", type=float, nargs="+", default=[0.01, 0.001])
    args = ap.parse_args()
    print(machine())
    print(f"trace {args.trace.name}")
    print("| key | phi | threshold (packets) | reported | top 3 (estimate / true) | precision | recall | F1 | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key in ("src_ip", "dst_ip"):
        config = load_config(None, {"keep_epochs": WHOLE_CAPTURE})
        config.sketches = {"hh": {"kind": "hiddensketch", "key": key, "memory_bytes": 56320, "phi": 1e-4}}
        for phi in args.phi:
            start = time.perf_counter()
            report, _ = analyze([args.trace], config, ReportOptions(phi=phi), truth=True)
            seconds = time.perf_counter() - start
            hh, truth = report["heavy_hitters"], report["truth"]["heavy_hitters"]
            if hh["error"]:
                print(f"| {key} | {phi:g} | – | not answered: {hh['error'][:80]} | | | | | {seconds:.1f} |")
                continue
            true = {r["key"]: r["estimate"] for r in truth["rows"]}
            top = ", ".join(f"{r['text']} ({r['estimate']:,.0f} / {true.get(r['key'], 0):,.0f})" for r in hh["rows"][:3])
            acc = report["accuracy"].get("heavy_hitters") or {}
            floor = f" (floor; phi asks {hh['asked_threshold']:,.0f})" if hh.get("floor") is not None else ""
            print(f"| {key} | {phi:g} | {hh['threshold']:,.0f}{floor} | {hh['count']} of {len(true)} true | "
                  f"{top or '(none)'} | {acc.get('precision', 0):.3f} | {acc.get('recall', 0):.3f} | "
                  f"{acc.get('f1', 0):.3f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
