"""The ``telesketch`` command line (demo, analyze, size, replay, serve, query, generate, summary, train-estimator).

Each sub-command is a thin layer over the library. Exit status, the same for every command:

* 0: success;
* 1: a runtime failure (the server is unreachable or refuses, a port is taken, a replay could not
  be fully acknowledged);
* 2: a usage error: bad options or config, a named input file that is missing or not a capture,
  an optional extra that is not installed. Errors are one line on stderr, not a traceback;
* 3: ``replay`` ran, but more than ``--max-late`` of its packets were refused as late;
* 130: interrupted (Ctrl-C).

Every command that prints a result takes ``--json`` (numbers stay numbers). Progress goes to stderr:
a bar on a terminal, a plain line every few seconds otherwise (``--no-progress``: none).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_LATE = 3  # replay: more than --max-late of the packets were refused as late


def _int_at_least(minimum: int, what: str):
    """An argparse type: an integer ``>= minimum``; the error names the rule and the value."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_count = _int_at_least(0, "an integer >= 0")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _float_where(accept, what: str):
    """An argparse type: a float for which ``accept(value)`` holds (NaN never does); the error
    names the rule and the value as typed."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if math.isnan(value) or not accept(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    return parse


_fraction = _float_where(lambda v: 0.0 <= v <= 1.0, "a fraction in [0, 1]")
_open_fraction = _float_where(lambda v: 0.0 < v < 1.0, "a fraction in (0, 1)")
_non_negative = _float_where(lambda v: 0.0 <= v < math.inf, "a number >= 0")


def _factor_list(text: str) -> tuple[float, ...]:
    """Comma-separated positive numbers (memory multiples)."""
    return tuple(_positive_float(part) for part in text.split(","))


def _flow_key(text: str) -> bytes:
    """A flow key of either family (:func:`telesketch.presenter.parse_flow_key`): flow text such as
    ``10.0.0.1:1234 > 10.0.0.2:80 proto 6`` or ``[2001:db8::1]:443 > [2001:db8::2]:53 udp`` (13 or
    37 bytes), or 26/74 hex digits."""
    from telesketch.presenter import parse_flow_key

    try:
        return parse_flow_key(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_report_options(parser) -> None:
    parser.add_argument("--phi", type=_open_fraction, default=1e-3,
                        help="heavy hitters/changers: fraction of the window's packets")
    parser.add_argument("--hhh-phi", type=_open_fraction, default=1e-3, help="HHH: fraction of the window's packets")
    parser.add_argument("--last", type=_positive_int, help="window: the last N epochs (default: all retained)")
    parser.add_argument("--top", type=_positive_int, default=10, help="rows per table")
    parser.add_argument("--top-flows", type=_positive_int, default=10, help="largest flows asked for")


def cmd_generate(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from telesketch.progress import ProgressBar
    from telesketch.traces import generate_capture

    start = time.perf_counter()
    with ProgressBar("generate", total=args.packets, enabled=False if args.no_progress else None) as bar:
        stats = generate_capture(args.output, packets=args.packets, flows=args.flows, zipf=args.zipf,
                                 gap_rate=args.gap_rate, seed=args.seed, mix=args.mix, progress=bar.set,
                                 ipv6_share=args.ipv6_share)
    seconds = time.perf_counter() - start
    if args.json:
        print(json.dumps({**dataclasses.asdict(stats), "seconds": round(seconds, 3)}, indent=1))
    else:
        print(f"wrote {args.output}: {stats.packets:,} packets, {stats.flows:,} flows, {stats.gaps:,} IP-ID gaps, "
              f"largest flow {stats.max_flow_size:,} packets, {stats.bytes_written / 1e6:.1f} MB in {seconds:.1f} s")
    return 0


def _summary_dict(summary, top: int) -> dict:
    """A :class:`~telesketch.summary.TrafficSummary` as JSON-able data (``top`` sources and flows)."""
    from telesketch.presenter import format_address
    from telesketch.summary import PROTO_NAMES, flow_parts

    flows = []
    for key, count in summary.flows.most_common(top):
        src, dst, sport, dport, proto = flow_parts(key)
        flows.append({"src": src, "dst": dst, "src_port": sport, "dst_port": dport,
                      "proto": PROTO_NAMES.get(proto, str(proto)), "packets": count})
    return {"path": summary.path, "packets": summary.packets, "ip_bytes": summary.ip_bytes,
            "flows": len(summary.flows), "sources": len(summary.sources), "duration_s": summary.duration_s,
            "protocols": {PROTO_NAMES.get(p, str(p)): c for p, c in summary.protocols.most_common()},
            "top_sources": [{"src": format_address(ip), "packets": c} for ip, c in summary.sources.most_common(top)],
            "top_flows": flows}


def cmd_summary(args: argparse.Namespace) -> int:
    import json

    from telesketch.summary import summarize_capture

    results = []
    for path in args.files:
        summary = summarize_capture(path, batch_size=args.batch_size)
        if args.json:
            results.append(_summary_dict(summary, args.top))
        else:
            print(summary.render(top=args.top))
    if args.json:
        print(json.dumps(results, indent=1))
    return 0


def _report_options(args: argparse.Namespace):
    from telesketch.report import ReportOptions

    return ReportOptions(phi=args.phi, hhh_phi=args.hhh_phi, last=args.last, top=args.top, flows=args.top_flows)


def cmd_demo(args: argparse.Namespace) -> int:
    """Generate a capture, serve, replay through gRPC, query everything, report (telesketch.demo)."""
    from telesketch.demo import run_demo
    from telesketch.replay import Progress

    if args.plot:
        from telesketch.plots import _pyplot

        _pyplot()  # fail before the work when matplotlib is missing
    import json

    out = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else \
        (lambda line: print(line, flush=True))
    report = run_demo(packets=args.packets, flows=args.flows, seed=args.seed, duration_s=args.duration,
                      opts=_report_options(args), out=out,
                      progress=Progress(enabled=None if not args.no_progress else False),
                      plot_dir=args.plot, json_path=args.json_out, ipv6_share=args.ipv6_share)
    if args.json:
        from telesketch.analyze import write_json

        print(write_json(report, None) if isinstance(report, dict) else json.dumps(report))
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    """Run the configured sketches locally on captures and print the report (telesketch.analyze)."""
    from telesketch.analyze import analyze, memory_sweep, write_json
    from telesketch.report import render_text
    from telesketch.service.config import load_config

    if args.plot:
        from telesketch.plots import _pyplot

        _pyplot()
    from telesketch.analyze import WHOLE_CAPTURE

    config = load_config(args.config, {"epoch_seconds": args.epoch_seconds,
                                       "keep_epochs": args.keep_epochs or WHOLE_CAPTURE, "device": args.device})
    opts = _report_options(args)
    from telesketch.progress import ProgressBar

    with ProgressBar("analyze", enabled=False if args.no_progress else None) as bar:
        report, _ = analyze(args.files, config, opts, batch_size=args.batch_size, truth=args.exact,
                            progress=bar.set)
    if args.plot:
        from telesketch.plots import write_plots

        sweep = memory_sweep(args.files, config, opts, batch_size=args.batch_size)
        report["memory_sweep"] = sweep
        for path in write_plots(report, args.plot, sweep):
            print(f"wrote {path}", file=sys.stderr)
    if args.json:
        print(write_json(report, None))
    else:
        print(render_text(report, opts))
    return 0


def cmd_size(args: argparse.Namespace) -> int:
    """Sweep each configured sketch's memory on captures; print the smallest that reaches the target F1."""
    import json

    from telesketch.service.config import load_config
    from telesketch.sizing import SIZE_FACTORS, render, size_sketches, write_plot

    if args.plot:
        from telesketch.plots import _pyplot

        _pyplot()
    if not 0.0 < args.target <= 1.0:
        raise ValueError(f"--target must be an F1 in (0, 1], got {args.target}")
    from telesketch.analyze import WHOLE_CAPTURE

    config = load_config(args.config, {"epoch_seconds": args.epoch_seconds,
                                       "keep_epochs": args.keep_epochs or WHOLE_CAPTURE})
    advice = size_sketches(args.files, config, _report_options(args), args.target, args.factors or SIZE_FACTORS,
                           args.batch_size, layout=args.layout)
    if args.plot and advice:
        print(f"wrote {write_plot(advice, args.plot)}", file=sys.stderr)
    if args.json:
        print(json.dumps([{"sketch": a.sketch, "kind": a.kind, "query": a.query, "target": a.target,
                           "configured_bytes": a.configured_bytes, "memory_bytes": a.memory_bytes,
                           "unit": a.unit, "points": a.points} for a in advice], indent=1))
    else:
        print(render(advice))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Stream captures to a service (telesketch.replay); Ctrl-C stops after the in-flight batch."""
    import json
    import signal
    import threading

    from telesketch.replay import Progress, ReplayOptions, replay

    token = Path(args.token_file).read_text().strip() if args.token_file else args.token
    root = Path(args.tls_ca).read_bytes() if args.tls_ca else None
    opts = ReplayOptions(args.target, speed=None if args.max else args.speed, loop=args.loop,
                         batch_size=args.batch_size, sender_id=args.sender_id, token=token, tls=args.tls,
                         root_certificates=root, retries=args.retries, backoff_s=args.backoff,
                         timeout_s=args.timeout, keep_timestamps=args.keep_timestamps, max_late=args.max_late)
    for path in args.files:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such file")
    stop = threading.Event()

    def on_sigint(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("\ntelesketch replay: stopping after the in-flight batch is acknowledged "
              "(Ctrl-C again to abort)", file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        progress = Progress(enabled=None if args.progress is None else args.progress)
        log = (lambda text: print(f"telesketch replay: {text}", file=sys.stderr, flush=True)) if args.verbose else None
        summary = replay(args.files, opts, stop=stop, progress=progress, log=log)
    finally:
        signal.signal(signal.SIGINT, previous)
    print(json.dumps(summary.as_dict(), indent=1) if args.json else summary.render(), flush=True)
    for warning in summary.warnings:
        print(f"telesketch replay: warning: {warning}", file=sys.stderr)
    if summary.error:
        print(f"telesketch replay: error: {summary.error}", file=sys.stderr)
        return EXIT_USAGE if summary.error_kind == "input" else EXIT_FAILURE
    if summary.interrupted:
        return EXIT_INTERRUPTED
    if summary.packets_rejected:  # refused batches are lost to the answers: loud, not a success
        return EXIT_FAILURE
    return EXIT_LATE if summary.too_late else EXIT_OK


def cmd_train_estimator(args: argparse.Namespace) -> int:
    """Train an LLM-Sketch flow-size estimator on part of a capture (spec llmsketch §4).

    ``TRACE`` is a capture file (split in time: each source capture's first part trains, see
    ``--split``; ``--memory-kib`` picks the pivot of ``trees``), ``synthetic:PACKETS,FLOWS,SEED`` for the
    labelled generated capture of ``telesketch.estimators.synthetic`` (split by packet index), or
    ``generated:PACKETS,FLOWS,SEED[,SEED...]`` for the traffic of ``telesketch.traces.generate_batch``
    / ``generate_capture`` (one trace per seed, concatenated; split by flow: ``--train-fraction`` of
    the flows train, the rest are the held-out evaluation set). Several ``TRACE`` arguments train one
    model on all of them (e.g. a real capture and ``generated:...``, issue #19): each is split on
    its own (default ``time``), the training parts are pooled, each held-out part is reported.
    """
    import json

    from telesketch.estimators import TRAINING_MODULES, MissingExtraError, require_llm
    from telesketch.estimators.training import generated_batch, source_names, train_estimator

    config = json.loads(args.config) if args.config else {}
    if not isinstance(config, dict):
        print(f"telesketch train-estimator: error: --config must be a JSON object of model settings, e.g. "
              f"'{{\"epochs\": 2}}', got {args.config!r}", file=sys.stderr)
        return EXIT_USAGE
    split = args.split or "time"
    sources, names = [], []
    try:
        require_llm(*TRAINING_MODULES[args.kind])  # fail fast on a missing extra, before generating traffic
        for trace in args.trace:
            name = trace
            if trace.startswith(("synthetic:", "generated:")):
                source, spec = trace.split(":", 1)
                if source == "generated":
                    trace = generated_batch(spec)
                    if len(args.trace) == 1:
                        split = args.split or "flow"
                else:
                    from telesketch.estimators.synthetic import generate_labelled_batch

                    try:
                        packets, flows, seed = (int(x) for x in spec.split(","))
                    except ValueError:
                        raise ValueError(f"synthetic source must be PACKETS,FLOWS,SEED, got {spec!r}") from None
                    trace = generate_labelled_batch(packets, flows, seed=seed)
            else:
                name = None  # named below, beside the other captures
            sources.append(trace)
            names.append(name)
        paths = [trace for trace, name in zip(sources, names) if name is None]
        path_names = iter(source_names(paths))  # a/x.pcap and b/x.pcap where two share a file name
        names = [next(path_names) if name is None else name for name in names]
        report = train_estimator(sources[0] if len(sources) == 1 else sources, args.kind, args.out,
                                 train_fraction=args.train_fraction,
                                 max_flows=args.max_flows, seed=args.seed, split=split,
                                 memory_kib=args.memory_kib, manifest=args.manifest,
                                 progress=not args.no_progress, names=names, **config)
    except MissingExtraError as exc:
        print(f"telesketch train-estimator: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:
        print(f"telesketch train-estimator: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(report, indent=1))
    for warning in report.get("warnings", []):
        print(f"telesketch train-estimator: warning: {warning}", file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the streaming service until SIGINT/SIGTERM (config file, then flags)."""
    import asyncio
    import logging

    from telesketch.service.config import load_config
    from telesketch.service.server import serve

    logging.basicConfig(level=getattr(logging, args.log_level.upper()), format="%(asctime)s %(levelname)s %(message)s")
    overrides = {"grpc_address": args.grpc_address, "http_address": args.http_address, "data_dir": args.data_dir,
                 "epoch_seconds": args.epoch_seconds, "keep_epochs": args.keep_epochs, "token": args.token,
                 "tls_cert": args.tls_cert, "tls_key": args.tls_key, "wal": False if args.no_wal else None,
                 "shards": args.shards, "ray_address": args.ray_address, "device": args.device,
                 "durability": args.durability, "recover": True if args.recover else None,
                 "admin_token": args.admin_token, "max_inflight_bytes": args.max_inflight_bytes}
    if args.token_file:
        overrides["token"] = Path(args.token_file).read_text().strip()
    if args.admin_token_file:
        overrides["admin_token"] = Path(args.admin_token_file).read_text().strip()
    config = load_config(args.config, overrides)

    def ready(service):
        print(f"telesketch serving grpc={service.grpc_port} http={service.http_port}", flush=True)

    asyncio.run(serve(config, ready))
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    """Run one query against a server and print a table (or JSON with --json)."""
    import grpc

    try:
        return _run_query(args)
    except grpc.RpcError as exc:
        print(f"telesketch query: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return exit_status(exc)


def _run_query(args: argparse.Namespace) -> int:
    import json

    from telesketch.client import Client
    from telesketch.presenter import hhh_rows, key_family, key_text, ranked, time_text

    root = Path(args.tls_ca).read_bytes() if args.tls_ca else None
    token = Path(args.token_file).read_text().strip() if args.token_file else args.token
    window = {"epoch": args.epoch, "last": args.last, "closed_only": args.closed_only, "sketch": args.sketch}
    thresholds = {"phi": args.phi, "threshold": args.threshold}
    with Client(args.server, token=token, root_certificates=root, tls=args.tls) as client:
        what = args.what
        if what == "top-flows" and args.k < 1:
            raise ValueError(f"top-flows needs --k >= 1, got {args.k}")
        if what == "stats":
            print(json.dumps(client.stats(), indent=2))
            return 0
        unit = ""  # what the estimates count, as the server says (WindowInfo.unit; "" from an older server)
        if what == "top-flows":
            answer, info = client.top_flows(args.k, **window, text=True, details=True)
            rows, unit = [(t, v) for _, v, t in answer], info.unit
            header = ("flow", "estimate")
        elif what in ("heavy-hitters", "heavy-changers"):
            call = client.heavy_hitters if what == "heavy-hitters" else client.heavy_changers
            answer, info = call(**window, **thresholds, text=True, details=True)
            # mixed families: equal values list IPv4 before IPv6, the same order on every call
            rows = [(t, v) for _, v, t in ranked(answer, by_magnitude=what == "heavy-changers")]
            header, unit = ("key", "change" if what == "heavy-changers" else "estimate"), info.unit
            if info.partial:
                print(f"telesketch query: PARTIAL answer from sketch {info.sketch}: its decode could not finish "
                      "(too little memory for this traffic): keys may be missing, estimates are upper bounds",
                      file=sys.stderr)
        elif what == "hhh":
            # the IPv4 tree, then the IPv6 tree (each by length, then prefix)
            answer, info = client.hhh(**window, **thresholds, families=(4, 6), details=True)
            rows = [(f"IPv{r['family']}", r["prefix"], r["estimate"]) for r in hhh_rows(answer)]
            header, unit = ("family", "prefix", "discounted estimate"), info.unit
        elif what == "gaps":
            gaps = client.flow_gaps(limit=args.k, **window)
            if args.json:  # numbers stay numbers; the time as text beside them
                print(json.dumps([{"time": time_text(g.ts_ns), "ts_ns": g.ts_ns, "flow": key_text(g.key),
                                   "family": key_family(g.key), "jump": g.jump} for g in gaps], indent=2))
                return 0
            rows = [(time_text(g.ts_ns), key_text(g.key), g.jump) for g in gaps]
            header = ("time (UTC)", "flow", "jump")
        else:  # flow-size
            keys = args.key
            sizes, info = client.flow_size(keys, **window, details=True)
            rows, unit = [(key_text(k), v) for k, v in zip(keys, sizes)], info.unit
            header = ("flow", "estimate")
    if args.json:  # numbers stay numbers; each row says what they count
        print(json.dumps([dict(zip(header, row)) | ({"unit": unit} if unit else {}) for row in rows], indent=2))
    else:  # the count column's header names its unit: "estimate (bytes)"
        header = header[:-1] + (f"{header[-1]} ({unit})",) if unit else header
        _print_table(header, [tuple(c if isinstance(c, str) else f"{c:,.0f}" for c in row) for row in rows])
    return 0


def _print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
    if not rows:
        print("(no rows)")


_DEVICE_HELP = ("where the sketches with a GPU twin run (default: the config's, else cpu); gpu needs a CUDA "
                "device and pip install 'telesketch[gpu]', and is an error without them")


def _add_service_commands(sub) -> None:
    """The ``serve`` and ``query`` sub-commands (the streaming service, telesketch.service)."""
    serve = sub.add_parser("serve", help="run the streaming service (gRPC + HTTP /metrics and /api/v1)")
    serve.add_argument("--config", help="TOML or JSON config file (defaults work without one)")
    serve.add_argument("--grpc-address", help="host:port for gRPC (default 127.0.0.1:50051)")
    serve.add_argument("--http-address", help="host:port for HTTP (default 127.0.0.1:9108; '' disables)")
    serve.add_argument("--data-dir", help="snapshots and write-ahead log (default ./telesketch-data)")
    serve.add_argument("--epoch-seconds", type=_positive_float, help="tumbling epoch length in seconds of packet time "
                       "(default 10)")
    serve.add_argument("--keep-epochs", type=_positive_int, help="closed epochs kept for windowed queries (default 6)")
    serve.add_argument("--token", help="require this bearer token")
    serve.add_argument("--token-file", help="read the bearer token from a file")
    serve.add_argument("--shards", type=_positive_int,
                       help="run the sketches on this many Ray actors (needs telesketch[ray]; default 1: in process)")
    serve.add_argument("--ray-address", help="Ray cluster to join with --shards (default: start a local one)")
    serve.add_argument("--device", choices=["cpu", "gpu"], help=_DEVICE_HELP)
    serve.add_argument("--tls-cert", help="PEM certificate chain: gRPC and HTTP speak TLS only (with --tls-key)")
    serve.add_argument("--tls-key", help="PEM private key of --tls-cert")
    serve.add_argument("--no-wal", action="store_true", help="no write-ahead log (a crash loses the open epoch)")
    serve.add_argument("--durability", choices=["none", "interval", "every-batch"],
                       help="when the log is fsynced (default every-batch; see README, Durability)")
    serve.add_argument("--recover", action="store_true",
                       help="start from a damaged data directory: keep what is intact, log exactly what is dropped")
    serve.add_argument("--max-inflight-bytes", type=_positive_int,
                       help="batch bytes all ingest calls may hold at once (default 268435456 = 256 MiB); a batch "
                            "beyond it is refused as busy (RESOURCE_EXHAUSTED) and clients retry with backoff")
    serve.add_argument("--admin-token", help="require this token for Admin calls (default: Admin from loopback only)")
    serve.add_argument("--admin-token-file", help="read the admin token from a file")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                       help="logging threshold on stderr (default info)")
    serve.set_defaults(func=cmd_serve)

    query = sub.add_parser("query", help="query a running service and print a table")
    query.add_argument("what", choices=["heavy-hitters", "heavy-changers", "hhh", "gaps", "flow-size",
                                        "top-flows", "stats"], help="which query to run")
    query.add_argument("--target", "--server", dest="server", default="127.0.0.1:50051",
                       help="HOST:PORT of the service's gRPC endpoint")
    query.add_argument("--epoch", type=int, help="one epoch by id")
    query.add_argument("--last", type=_positive_int, help="the last N epochs (default 1)")
    query.add_argument("--closed-only", action="store_true", help="window: closed epochs only (not the open one)")
    query.add_argument("--sketch", default="", help="configured sketch name")
    query.add_argument("--phi", type=_open_fraction, help="heavy hitters/changers, hhh: fraction of the window's packets")
    query.add_argument("--threshold", type=_non_negative, help="heavy hitters/changers, hhh: absolute packets (instead of --phi)")
    query.add_argument("--k", type=_count, default=10, help="top-flows: how many (>= 1); gaps: at most this many (0: all)")
    query.add_argument("--key", type=_flow_key, action="append", default=[],
                       help="flow-size: a flow, '10.0.0.1:1234 > 10.0.0.2:80 proto 6' or "
                            "'[2001:db8::1]:443 > [2001:db8::2]:53 udp' (IPv6 ends in brackets), or its key as "
                            "26 (IPv4) or 74 (either family) hex digits; repeatable")
    query.add_argument("--token", default="", help="bearer token the server requires")
    query.add_argument("--token-file", help="read the bearer token from a file")
    query.add_argument("--tls", action="store_true", help="connect with TLS (system roots unless --tls-ca)")
    query.add_argument("--tls-ca", help="PEM root certificate for TLS")
    query.add_argument("--json", action="store_true", help="print JSON (numbers stay numbers) instead of a table")
    query.set_defaults(func=cmd_query)


def build_parser() -> argparse.ArgumentParser:
    from telesketch import __version__

    parser = argparse.ArgumentParser(prog="telesketch", description=__doc__.splitlines()[0],
                                     epilog="exit status: 0 success, 1 runtime failure, 2 usage error, 3 replay: too many packets late, 130 interrupted")
    parser.add_argument("--version", action="version", version=f"telesketch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="generate a capture, serve it, replay it through gRPC and report "
                                        "(the README's main job)")
    demo.add_argument("--packets", type=_positive_int, default=1_000_000, help="packets to generate and replay")
    demo.add_argument("--flows", type=_positive_int, default=5_000,
                      help="distinct flows (the LLM-Sketch estimator costs one model call per flow and epoch)")
    demo.add_argument("--duration", type=_positive_float, default=20.0, help="seconds of traffic (epochs are 10 s)")
    demo.add_argument("--seed", type=int, default=7, help="generator seed (same seed, same capture)")
    demo.add_argument("--ipv6-share", type=_fraction, default=0.4,
                      help="fraction of the flows sent over IPv6, with extension headers and fragments "
                           "(default 0.4; 0: IPv4 only); answers are checked against exact truth per family")
    demo.add_argument("--plot", metavar="DIR", help="also write PNG charts there (needs matplotlib)")
    demo.add_argument("--json-out", metavar="FILE", help="also write the JSON report there")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines on stderr")
    demo.add_argument("--json", action="store_true", help="print the report as JSON on stdout (steps go to stderr)")
    _add_report_options(demo)
    demo.set_defaults(func=cmd_demo)

    analyze = sub.add_parser("analyze", help="run the sketches locally on captures (no server) and report")
    analyze.add_argument("files", nargs="+", help="pcap or pcapng captures, optionally gzip-compressed")
    analyze.add_argument("--config", help="service config file (TOML/JSON): the same sketches as `serve --config`")
    analyze.add_argument("--epoch-seconds", type=_positive_float, help="epoch length in seconds (default: config, 10)")
    analyze.add_argument("--keep-epochs", type=_positive_int,
                         help="keep only the last N epochs (default: every epoch, the whole capture)")
    analyze.add_argument("--device", choices=["cpu", "gpu"], help=_DEVICE_HELP)
    analyze.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines on stderr")
    analyze.add_argument("--batch-size", type=_positive_int, default=65536,
                         help="packets per batch (use the replay's to compare with a server)")
    analyze.add_argument("--exact", action="store_true", help="add exact ground truth and the accuracy of every answer")
    analyze.add_argument("--json", action="store_true", help="print the report as JSON (schema: telesketch.report)")
    analyze.add_argument("--plot", metavar="DIR", help="write PNG charts there (needs matplotlib: telesketch[plot])")
    _add_report_options(analyze)
    analyze.set_defaults(func=cmd_analyze)

    size = sub.add_parser("size", help="the smallest memory per sketch that reaches a target F1 on captures")
    size.add_argument("files", nargs="+", help="pcap or pcapng captures, optionally gzip-compressed")
    size.add_argument("--config", help="service config file (TOML/JSON): the sketches to size")
    size.add_argument("--target", type=_positive_float, default=0.95, help="F1 to reach (default 0.95)")
    size.add_argument("--factors", type=_factor_list, help="comma-separated multiples of each configured memory "
                      "(default 1/8x..8x in sqrt(2) steps)")
    size.add_argument("--epoch-seconds", type=_positive_float, help="epoch length in seconds (default: config, 10)")
    size.add_argument("--keep-epochs", type=_positive_int, help="keep only the last N epochs (default: the whole capture)")
    size.add_argument("--batch-size", type=_positive_int, default=65536, help="packets per batch")
    size.add_argument("--json", action="store_true", help="print the sweep and the advice as JSON")
    size.add_argument("--plot", metavar="DIR", help="write accuracy_vs_memory.png there (needs telesketch[plot])")
    size.add_argument("--layout", choices=["paper", "tuned"], default=None,
                      help="run every ResidualSketch with this layout instead of its configured one: paper (the "
                           "spec's /16 block, equal split) or tuned (chosen per memory point; issue 20); each "
                           "ResidualSketch point prints the layout it ran with")
    _add_report_options(size)
    size.set_defaults(func=cmd_size)

    rep = sub.add_parser("replay", help="stream captures to a telesketch service over gRPC")
    rep.add_argument("files", nargs="+", help="pcap or pcapng, optionally gzip-compressed")
    rep.add_argument("--target", default="127.0.0.1:50051", help="HOST:PORT of the service's gRPC endpoint")
    pace = rep.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=_positive_float, help="replay at X times the recorded pace")
    pace.add_argument("--max", action="store_true", help="as fast as the service acknowledges (default)")
    rep.add_argument("--loop", type=_positive_int, default=1, help="play the files N times (timestamps shifted)")
    rep.add_argument("--keep-timestamps", action="store_true",
                     help="send the recorded timestamps (default: re-time the capture to now, gaps kept)")
    rep.add_argument("--max-late", type=_fraction, default=0.01,
                     help="fraction of packets the service may refuse as late before the replay exits "
                          "with status 3 (default 0.01; any late packet is warned about)")
    rep.add_argument("--batch-size", type=_positive_int, default=65536, help="packets per gRPC call")
    rep.add_argument("--sender-id", default="", help="resume this sender's sequence (default: a fresh id)")
    rep.add_argument("--token", default="", help="bearer token the server requires")
    rep.add_argument("--token-file", help="read the bearer token from a file")
    rep.add_argument("--tls", action="store_true", help="connect with TLS (system roots unless --tls-ca)")
    rep.add_argument("--tls-ca", help="PEM root certificate for TLS")
    rep.add_argument("--retries", type=_count, default=6, help="retries of a batch when the server is unreachable")
    rep.add_argument("--backoff", type=_non_negative, default=0.25, help="first retry delay in seconds (doubles, max 5 s)")
    rep.add_argument("--timeout", type=_positive_float, default=60.0, help="seconds per call")
    rep.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help="progress on stderr (the default: a bar on a terminal, a line every 10 s otherwise)")
    rep.add_argument("--no-progress", dest="progress", action="store_false", help="no progress on stderr")
    rep.add_argument("--json", action="store_true", help="print the summary as JSON")
    rep.add_argument("-v", "--verbose", action="store_true", help="log retries")
    rep.set_defaults(func=cmd_replay)

    gen = sub.add_parser("generate", help="write a synthetic pcap")
    gen.add_argument("output", help="pcap file to write")
    gen.add_argument("--packets", type=_positive_int, default=1_000_000, help="IPv4 packets to write")
    gen.add_argument("--flows", type=_positive_int, default=50_000, help="distinct 5-tuple flows")
    gen.add_argument("--zipf", type=_non_negative, default=1.1, help="Zipf exponent of flow sizes (0: uniform; larger: more skewed)")
    gen.add_argument("--gap-rate", type=_fraction, default=0.01, help="fraction of packets followed by an IP-ID gap")
    gen.add_argument("--seed", type=int, default=0, help="random seed (same seed, same file)")
    gen.add_argument("--mix", choices=["zipf", "hard"], default="zipf",
                     help="hard: scanners, elephants, Zipf sources, hot /16 and /24 (a stress test for sketches)")
    gen.add_argument("--ipv6-share", type=_fraction, default=0.0,
                     help="fraction of flows sent over IPv6, with extension headers and fragments (0: IPv4 only)")
    gen.add_argument("--json", action="store_true", help="print what was written as JSON")
    gen.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines on stderr")
    gen.set_defaults(func=cmd_generate)

    summ = sub.add_parser("summary", help="traffic summary of captures (pcap, pcapng, gzip)")
    summ.add_argument("files", nargs="+", help="pcap or pcapng captures, optionally gzip-compressed")
    summ.add_argument("--batch-size", type=_positive_int, default=65536, help="packets per read batch")
    summ.add_argument("--top", type=_positive_int, default=10, help="sources and flows listed")
    summ.add_argument("--json", action="store_true", help="print a JSON array, one object per capture")
    summ.set_defaults(func=cmd_summary)

    train = sub.add_parser("train-estimator", help="train an LLM-Sketch flow-size estimator on a capture")
    train.add_argument("trace", nargs="+",
                       help="a capture, synthetic:PACKETS,FLOWS,SEED or generated:PACKETS,FLOWS,SEED[,SEED...]; "
                            "several train one model on all of them (each split on its own)")
    train.add_argument("--kind", choices=["lm", "lm-lora", "tiny", "trees"], default="lm",
                       help="lm: frozen MiniLM header embedder (int8 ONNX) + MLP head, calibrated to the pivot; "
                            "lm-lora: MiniLM fine-tuned with LoRA; tiny: small transformer (all three need [llm]); "
                            "trees: scikit-learn boosted trees ([llm] to train; served with numpy)")
    train.add_argument("--out", required=True, help="directory for the trained model")
    train.add_argument("--train-fraction", type=_open_fraction, default=0.5, help="share of the trace that trains (rest: evaluation)")
    train.add_argument("--split", choices=["time", "packet", "capture", "flow"], default=None,
                       help="time (default for captures): each source capture's first part trains; capture: "
                            "whole captures train or test; packet: by packet index; flow (default for generated:)")
    train.add_argument("--manifest", default=None,
                       help="JSON [[file, packets], ...] of a joined capture's sources (default: a *manifest.json "
                            "beside the trace whose counts match it)")
    train.add_argument("--memory-kib", type=_positive_float, default=400,
                       help="LLM-Sketch memory the model is for: sets the pivot T and the held-out sketch figures")
    train.add_argument("--max-flows", type=_positive_int, default=20_000, help="at most this many training flows")
    train.add_argument("--seed", type=int, default=0, help="random seed of sampling and training")
    train.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines on stderr")
    train.add_argument("--config", default="", help='JSON of model settings, e.g. \'{"epochs": 2, "lr": 1e-3}\'')
    train.set_defaults(func=cmd_train_estimator)

    _add_service_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # usage errors: argparse prints them and exits 2
    return _run(args)


def exit_status(exc: BaseException) -> int | None:
    """The exit status for an exception a command raised (None: a bug, let it raise).

    Usage (2): bad values (``ValueError``: option checks, ``ConfigError``, a file that is not a
    capture), a named file that is missing or unreadable, an optional extra not installed, and a
    request the server refused for what it asks (INVALID_ARGUMENT, FAILED_PRECONDITION,
    OUT_OF_RANGE: a threshold below a sketch's floor, an unknown sketch). Runtime failure (1): other
    ``OSError`` (a port in use, a lost connection), any other ``grpc.RpcError``."""
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, ValueError)):
        return EXIT_USAGE
    if isinstance(exc, ImportError):  # a missing optional extra says how to install it; others are bugs
        return EXIT_USAGE if "pip install" in str(exc) else None
    if isinstance(exc, OSError):
        return EXIT_FAILURE
    try:
        import grpc

        if isinstance(exc, grpc.RpcError):
            asked_wrong = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
                           grpc.StatusCode.OUT_OF_RANGE)
            code = exc.code() if isinstance(exc, grpc.Call) else None
            return EXIT_USAGE if code in asked_wrong else EXIT_FAILURE
    except ImportError:  # pragma: no cover - grpcio is a base dependency
        pass
    return None


def error_detail(exc: BaseException) -> str:
    """The text a failed command prints: ``CODE: details`` for the error of a gRPC call (the
    server's status and message), else the exception's own text."""
    import grpc

    return f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.Call) else str(exc)


def _run(args: argparse.Namespace) -> int:
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"telesketch {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `telesketch query ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001 - mapped to a status, or re-raised as a bug
        status = exit_status(exc)
        if status is None:
            raise
        print(f"telesketch {args.command}: error: {error_detail(exc)}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
