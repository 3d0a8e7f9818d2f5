"""The status page at ``/`` in a real browser: headless Chromium (Debian's ``chromium``) loads it
from a live server, takes a screenshot, and the rendered page shows the server's current answers."""
from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request

import pytest

from telesketch.client import Client
from telesketch.service.server import ServiceThread
from test_service import config, generate_batches

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no headless Chromium installed (Debian: apt-get install chromium); .ci/run installs it")


def headless(browser: str, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    """Run headless Chromium (no sandbox: CI runs as root in a container; no GPU)."""
    return subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--hide-scrollbars", "--no-first-run", "--user-data-dir=" + args[0], *args[1:]],
                          capture_output=True, text=True, timeout=timeout)


def test_status_page_in_headless_chromium(tmp_path):
    browser = _browser()
    with ServiceThread(config(tmp_path, sketches={"exact": {"kind": "exact", "phi": 0.01},
                                                  "gaps": {"kind": "gapfilter_ao"}})) as svc:
        Client(f"127.0.0.1:{svc.grpc_port}", sender_id="browser").push(generate_batches(2, 8_000, 4_000))
        url = f"http://127.0.0.1:{svc.http_port}/"
        hitters = json.load(urllib.request.urlopen(url + "api/v1/heavy_hitters?last=1", timeout=10))
        shot = tmp_path / "status.png"
        run = headless(browser, str(tmp_path / "profile"), "--window-size=1280,1000", f"--screenshot={shot}", url)
        assert shot.is_file(), run.stderr[-2000:]
        dom = headless(browser, str(tmp_path / "profile2"), "--dump-dom", url).stdout
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a rendered page, not a blank one
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1280, 1000)
    assert "telesketch" in dom and "<svg" in dom
    assert hitters and all(row["key"] in dom for row in hitters[:5])
    assert "Ingest rate" in dom and "Hierarchical heavy hitters" in dom


def test_status_page_renders_ipv6_rows_and_gap_coverage(tmp_path):
    """Mixed traffic: the page shows IPv6 heavy hitters in RFC 5952 text, the IPv6 HHH tree and how
    many packets gap detection checked (Chromium parses the page as served)."""
    import html

    from telesketch.traces.generate import generate_batch

    browser = _browser()
    batch = generate_batch(8_000, 100, seed=4, duration_s=0.5, start_s=1_700_000_000.0, ipv6_share=0.5)
    with ServiceThread(config(tmp_path, epoch_seconds=10.0, sketches={
            "exact": {"kind": "exact", "phi": 0.01}, "gaps": {"kind": "gapfilter_ao"},
            "hhh": {"kind": "residualsketch", "mode": "byte", "memory_bytes": 32 * 1024, "threshold": 200}})) as svc:
        Client(f"127.0.0.1:{svc.grpc_port}", sender_id="browser6").push([batch])
        url = f"http://127.0.0.1:{svc.http_port}/"
        hitters = json.load(urllib.request.urlopen(url + "api/v1/heavy_hitters?last=1", timeout=10))
        dom = headless(browser, str(tmp_path / "profile"), "--dump-dom", url).stdout
    six = [r["key"] for r in hitters if r["family"] == 6]
    assert six and any(key in dom for key in six), (six, dom[:500])
    n4 = int((batch.ipv6 == 0).sum())
    assert html.escape("gap-checked (gaps)") in dom and f"{n4:,} of {len(batch):,}" in dom
