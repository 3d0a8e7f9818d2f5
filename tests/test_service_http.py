"""HTTP side of the service: the JSON API, the provisioned Grafana dashboard, Prometheus scraping."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest

from telesketch.client import Client
from telesketch.service.http import ROUTES
from telesketch.service.server import ServiceThread
from test_service import config, generate_batches

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


@pytest.fixture(scope="module")
def http_server(tmp_path_factory):
    svc = ServiceThread(config(tmp_path_factory.mktemp("http"))).start()
    Client(f"127.0.0.1:{svc.grpc_port}", sender_id="c").push(generate_batches(per_epoch=10_000))
    yield svc
    svc.stop()


def get(svc, path: str):
    with urllib.request.urlopen(f"http://127.0.0.1:{svc.http_port}{path}", timeout=10) as reply:
        return json.load(reply)


def test_every_endpoint_returns_its_documented_fields(http_server):
    for path, fields in ROUTES.items():
        query = "?key=" + "00" * 13 if path.endswith("flow_size") else ""
        body = get(http_server, path + query)
        rows = body if isinstance(body, list) else [body]
        assert rows, path
        for row in rows:
            assert set(fields) <= set(row), (path, row)


@pytest.mark.parametrize("path, status", [
    ("/api/v1/heavy_hitters?epoch=1", 404), ("/api/v1/heavy_hitters?last=0", 400),
    ("/api/v1/hhh?phi=abc", 400), ("/api/v1/top_flows?k=0", 400), ("/api/v1/nope", 404),
    ("/api/v1/flow_size?key=zz", 400), ("/api/v1/heavy_hitters?sketch=gaps", 400),
])
def test_http_errors_have_status_and_message(http_server, path, status):
    with pytest.raises(urllib.error.HTTPError) as info:
        get(http_server, path)
    assert info.value.code == status and json.load(info.value)["error"]


def test_dashboard_refers_only_to_served_endpoints_and_fields(http_server):
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "telesketch.json").read_text())
    assert dashboard["panels"]
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("heavy hitters", "hierarchical", "gaps over time", "top flows", "ingest rate"):
        assert topic in titles
    variables = {v["name"]: v["current"]["value"] for v in dashboard.get("templating", {}).get("list", [])}
    for panel in dashboard["panels"]:
        if panel["datasource"]["uid"] != "telesketch-api":  # Prometheus panels: tests/test_dashboard.py
            continue
        for target in panel["targets"]:
            path = target["url"]
            for name, value in variables.items():
                path = path.replace(f"${name}", value)
            url = urlparse(path)
            assert url.path in ROUTES, f"panel {panel['title']!r} uses {url.path}, which the API does not serve"
            rows = get(http_server, path)
            assert isinstance(rows, list) and rows, f"panel {panel['title']!r}: no rows from {target['url']}"
            for column in target["columns"]:
                assert column["selector"] in ROUTES[url.path] and column["selector"] in rows[0], \
                    f"panel {panel['title']!r}: field {column['selector']!r} not served by {url.path}"
    sources = (DEPLOY / "grafana" / "provisioning" / "datasources" / "telesketch.yml").read_text()
    assert "yesoreyeram-infinity-datasource" in sources and "telesketch-api" in sources


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_prometheus_scrapes_metrics(http_server, tmp_path):
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("Debian's prometheus is not installed (apt-get install -y prometheus)")
    text = urllib.request.urlopen(f"http://127.0.0.1:{http_server.http_port}/metrics").read().decode()
    for name in ("telesketch_packets_ingested_total", "telesketch_batches_rejected_total", "telesketch_packets_late_total",
                 "telesketch_queue_depth", "telesketch_epoch", "telesketch_sketch_memory_bytes", "telesketch_query_seconds"):
        assert name in text
    from prometheus_client.parser import text_string_to_metric_families

    labels = {name for family in text_string_to_metric_families(text) for sample in family.samples
              for name in sample.labels}
    versions = {"version", "python", "numba", "grpcio",  # telesketch_build_info
                "implementation", "major", "minor", "patchlevel"}  # python_info
    assert labels <= {"reason", "query", "sketch", "le", "device", "backend"} | versions  # fixed sets: no flow keys as labels
    shipped = (DEPLOY / "prometheus.yml").read_text()
    scrape = shipped.replace("15s", "1s").replace("127.0.0.1:9108", f"127.0.0.1:{http_server.http_port}")
    (tmp_path / "prometheus.yml").write_text(scrape)
    web = _free_port()
    proc = subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{web}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        want = json.load(urllib.request.urlopen(f"http://127.0.0.1:{http_server.http_port}/api/v1/stats"))["packets"]
        deadline, value = time.time() + 40, None
        while time.time() < deadline:
            try:
                reply = json.load(urllib.request.urlopen(
                    f"http://127.0.0.1:{web}/api/v1/query?query=telesketch_packets_ingested_total", timeout=5))
                result = reply["data"]["result"]
                if result:
                    value = float(result[0]["value"][1])
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.5)
        assert value == want, f"prometheus scraped {value}, the service counted {want}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_scorer_state_beside_a_sketch_is_reported(http_server):
    """LLM-Sketch's flow-score cache is outside its memory_bytes: stats and /metrics report it (issue #19)."""
    sketches = {s["name"]: s for s in get(http_server, "/api/v1/stats")["sketches"]}
    assert sketches["flows"]["scorer_bytes"] == 33 * (1 << 20)  # default cache_flows = 2^20 entries of 33 bytes
    assert all(s["scorer_bytes"] == 0 for name, s in sketches.items() if name != "flows")
    text = urllib.request.urlopen(f"http://127.0.0.1:{http_server.http_port}/metrics").read().decode()
    from prometheus_client.parser import text_string_to_metric_families

    gauge = {sample.labels["sketch"]: sample.value for family in text_string_to_metric_families(text)
             for sample in family.samples if sample.name == "telesketch_scorer_memory_bytes"}
    assert gauge == {"flows": 33 * (1 << 20)}
