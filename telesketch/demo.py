"""``telesketch demo``: the whole pipeline on one machine, with nothing prepared beforehand.

1. generate a realistic capture (:func:`telesketch.traces.generate_capture`: Zipf flow sizes,
   hierarchical addresses, IPv4-ID gaps; by default 40 % of the flows over IPv6, with extension
   headers and fragments) into a temporary directory;
2. start the service in this process on the embedded defaults (ephemeral loopback ports, a
   temporary data directory);
3. replay the capture through gRPC (:mod:`telesketch.replay`, as fast as the service acknowledges);
4. ask the service every query (:class:`telesketch.report.RemoteSource`) and, for accuracy, run the
   ``exact`` kind locally on the same packets with the same epochs and thresholds;
5. print the report, with the ingest rate and the time of each step, and every answer checked
   against the exact truth per address family (IPv4 and IPv6 side by side), plus which packets
   gap detection covered and the IPv6 packets withheld from IPv4-only sketches.

Default sizes (1,000,000 packets, 5,000 flows, 20 s of traffic: two 10 s epochs, so heavy changers
have a previous epoch) keep it under a minute on two cores: the LLM-Sketch ``lm`` estimator runs
one model call per flow per epoch, about 500 flows/s on two cores, and dominates the time.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from telesketch.report import ReportOptions, RemoteSource, build_report, name_fingerprints, render_text


def usable_sketches(specs: dict[str, dict]) -> tuple[dict[str, dict], list[str]]:
    """The specs the service accepts, and a note for each it refuses (a sketch whose build fails
    with a parameter error here would stop the service; the demo leaves it out instead)."""
    from telesketch.service.config import ConfigError
    from telesketch.service.sketchset import configure

    kept, notes = {}, []
    for name, spec in specs.items():
        try:
            configure({name: spec})
        except ConfigError as exc:
            notes.append(f"sketch {name} ({spec.get('kind')}) left out: {exc}")
            continue
        kept[name] = spec
    return kept, notes


#: Share of the demo's flows sent over IPv6 (IPv6 carries 40-50 % of traffic on many networks).
DEMO_IPV6_SHARE = 0.4


def run_demo(packets: int = 1_000_000, flows: int = 5_000, seed: int = 7, duration_s: float = 20.0,
             batch_size: int = 65536, opts: ReportOptions = ReportOptions(), out=print, progress=None,
             plot_dir: str | None = None, json_path: str | None = None,
             ipv6_share: float = DEMO_IPV6_SHARE) -> dict:
    """Run the demo; ``out(line)`` receives the text. Returns the report dict (with ``timings``).
    ``ipv6_share``: fraction of the flows over IPv6 (0: IPv4 only)."""
    from telesketch.analyze import manager_for, write_json
    from telesketch.client import Client
    from telesketch.replay import Progress, ReplayOptions, replay
    from telesketch.report import LocalSource, truth_specs
    from telesketch.service.config import load_config
    from telesketch.service.server import ServiceThread
    from telesketch.traces import generate_capture, read_capture

    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="telesketch-demo-") as tmp:
        path = Path(tmp) / "demo.pcap"
        mix = f", {ipv6_share:.0%} of the flows over IPv6" if ipv6_share else ", IPv4 only"
        out(f"[1/5] generating {packets:,} packets over {flows:,} flows, {duration_s:g} s of traffic{mix} (seed {seed}) ...")
        t = time.perf_counter()
        gen = generate_capture(path, packets=packets, flows=flows, zipf=1.1, gap_rate=0.01, seed=seed,
                               duration_s=duration_s, ipv6_share=ipv6_share)
        timings["generate"] = time.perf_counter() - t
        out(f"      {path.stat().st_size / 1e6:.1f} MB pcap, {gen.gaps:,} injected IP-ID gaps, largest flow "
            f"{gen.max_flow_size:,} packets ({timings['generate']:.1f} s)")

        config = load_config(None, {"grpc_address": "127.0.0.1:0", "http_address": "127.0.0.1:0",
                                    "data_dir": str(Path(tmp) / "data")})
        out("[2/5] starting the service on the embedded defaults ...")
        t = time.perf_counter()
        config.sketches, refused = usable_sketches(config.sketches)
        for note in refused:
            out(f"      note: {note}")
        with ServiceThread(config) as svc:
            timings["start"] = time.perf_counter() - t
            stats = svc.service.stats()
            active = [f"{s['name']} ({s['kind']})" for s in stats["sketches"] if s["active"]]
            out(f"      gRPC 127.0.0.1:{svc.grpc_port}, HTTP http://127.0.0.1:{svc.http_port}/metrics; "
                f"sketches: {', '.join(active) or 'none'} ({timings['start']:.1f} s)")
            for note in stats["notes"]:
                out(f"      note: {note}")

            target = f"127.0.0.1:{svc.grpc_port}"
            out(f"[3/5] replaying the capture to {target} through gRPC ...")
            # recorded stamps: the ground truth below reads the same file into the same epochs
            summary = replay([path], ReplayOptions(target, batch_size=batch_size, sender_id="demo",
                                                   keep_timestamps=True), progress=progress or Progress(enabled=False))
            timings["replay"] = summary.seconds
            for line in summary.render().splitlines():
                out("      " + line)
            if summary.error:
                raise RuntimeError(f"demo replay failed: {summary.error}")

            out("[4/5] ground truth: the exact kind over the same packets and epochs ...")
            t = time.perf_counter()
            truth = manager_for(truth_specs(config.sketches), config)
            for batch in read_capture(path, batch_size=batch_size):
                truth.apply(batch)
            timings["truth"] = time.perf_counter() - t

            out("[5/5] querying every answer ...")
            t = time.perf_counter()
            with Client(target) as client:
                ingest = {"bytes": sum(b.ip_bytes for b in summary.batches), "seconds": summary.seconds,
                          "packets_per_second": summary.packets_per_second,
                          "bytes_per_second": summary.bytes_per_second}
                source = RemoteSource(client)
                # the service runs in this process: its IPv6 counters per epoch of the window (a
                # remote one gives them since start, from /metrics: RemoteSource(metrics_url=...))
                source.ipv6 = LocalSource(svc.service.manager).ipv6
                report = build_report(source, opts, mode="service", files=[f"demo.pcap ({packets:,} "
                                      f"packets, {flows:,} flows)"], target=target, ingest=ingest,
                                      epoch_seconds=config.epoch_seconds, truth=LocalSource(truth))
            name_fingerprints(report)
            timings["query"] = time.perf_counter() - t
            if plot_dir:
                from telesketch.plots import write_plots

                for written in write_plots(report, plot_dir):
                    out(f"      wrote {written}")
    timings["total"] = time.perf_counter() - t_all
    report["timings"] = timings
    report["notes"] = refused + report["notes"]
    out("")
    out(render_text(report, opts))
    out("")
    out("timings    " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    if json_path:
        write_json(report, json_path)
    return report
