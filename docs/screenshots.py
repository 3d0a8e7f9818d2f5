"""Regenerate the pictures in docs/ (the README shows them): the status page in headless Chromium
and every report chart, from one generated capture served with the default configuration.

    python docs/screenshots.py            # needs chromium and matplotlib (telesketch[plot])
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent


def main() -> int:
    from telesketch.analyze import analyze, memory_sweep
    from telesketch.plots import write_plots
    from telesketch.replay import ReplayOptions, replay
    from telesketch.report import ReportOptions
    from telesketch.service.config import load_config
    from telesketch.service.server import ServiceThread
    from telesketch.traces import generate_capture

    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        print("no chromium: apt-get install chromium", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="telesketch-docs-") as tmp:
        capture = Path(tmp) / "docs.pcap"
        generate_capture(capture, packets=300_000, flows=3_000, seed=4, duration_s=12.0)
        config = load_config(None, {"grpc_address": "127.0.0.1:0", "http_address": "127.0.0.1:0",
                                    "data_dir": str(Path(tmp) / "data"), "epoch_seconds": 2.0})
        with ServiceThread(config) as svc:
            summary = replay([capture], ReplayOptions(f"127.0.0.1:{svc.grpc_port}", batch_size=16384))
            assert summary.error is None, summary.error
            subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                            f"--user-data-dir={tmp}/profile", "--window-size=1280,1080",
                            f"--screenshot={DOCS / 'status_page.png'}", f"http://127.0.0.1:{svc.http_port}/"],
                           check=True, capture_output=True, timeout=120)
        config = load_config(None, {})
        opts = ReportOptions()
        report, _ = analyze([capture], config, opts, truth=True)
        sweep = memory_sweep([capture], config, opts)
        for path in write_plots(report, DOCS, sweep):
            print(f"wrote {path}")
    print(f"wrote {DOCS / 'status_page.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
