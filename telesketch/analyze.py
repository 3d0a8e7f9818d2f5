"""``telesketch analyze``: run the configured sketches on captures locally (no server), report.

The packets go through the service's own epoch manager and sketch set
(:class:`~telesketch.service.epochs.EpochManager` without a data directory), in the batches
``read_capture`` yields, exactly as a replay with the same batch size feeds a server; the report is
asked through the service's query engine (:mod:`telesketch.report`). So ``analyze FILE`` and
``replay FILE`` + queries against a server with the same configuration give the same answers.

``telesketch analyze`` keeps every epoch (``keep_epochs`` = :data:`WHOLE_CAPTURE`, whatever the
config says, unless ``--keep-epochs`` is given), so its report covers the whole capture and its
header says so (``window     whole capture: N epoch(s)``); memory grows with the epochs (each keeps
its sketches' states: about 0.5 MiB an epoch with the default set).

``--exact`` feeds the same batches to a second manager whose only sketch is the ``exact`` kind
(ground truth with the same epochs, window and thresholds) and adds the accuracy of every answer.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from telesketch.report import LocalSource, ReportOptions, build_report, name_fingerprints, truth_specs
from telesketch.service.config import ServiceConfig
from telesketch.service.epochs import EpochManager
from telesketch.service.sketchset import SketchSet, configure


#: ``keep_epochs`` of ``telesketch analyze`` by default: never drop an epoch (the whole capture).
WHOLE_CAPTURE = 2**31 - 1


@dataclass
class LocalRun:
    """Managers fed with the same batches: the configured sketches, and optionally the truth."""

    config: ServiceConfig
    manager: EpochManager
    truth: EpochManager | None = None
    packets: int = 0
    ip_bytes: int = 0
    seconds: float = 0.0          #: time spent applying batches to the configured sketches
    files: list[str] = field(default_factory=list)

    def ingest(self) -> dict:
        """The report's ``ingest`` section (rates of the sketch updates alone)."""
        s = max(self.seconds, 1e-9)
        return {"bytes": self.ip_bytes, "seconds": self.seconds, "packets_per_second": self.packets / s,
                "bytes_per_second": self.ip_bytes / s}


def manager_for(specs: dict[str, dict], config: ServiceConfig, tolerant: bool = False) -> EpochManager:
    """An in-memory EpochManager over ``specs`` with the config's epoch length and retention.

    ``tolerant``: a sketch whose parameters are refused is left out instead of failing (sweeps).
    """
    if tolerant:
        sketches = []
        for name, spec in specs.items():
            try:
                sketches += configure({name: spec}, config.device)
            except ValueError:
                continue
        sketchset = SketchSet(sketches)
    else:
        sketchset = SketchSet.from_config(specs, config.device)
    return EpochManager(sketchset, config.epoch_ns, config.keep_epochs, None)


def run_local(files, config: ServiceConfig, batch_size: int = 65536, truth: bool = False,
              extra: EpochManager | None = None, progress=None) -> LocalRun:
    """Read every capture (in order) into the configured sketches; ``truth`` adds the exact kind.

    ``extra``: one more manager fed the same batches (the accuracy-vs-memory sweep). A corrupt
    capture raises :class:`~telesketch.traces.CaptureError` after its good packets were applied.
    ``progress(packets)``: called after each batch with the packets applied so far.
    """
    from telesketch.traces import read_capture

    run = LocalRun(config, manager_for(config.sketches, config), files=[str(f) for f in files])
    if truth:
        run.truth = manager_for(truth_specs(config.sketches), config)
    for path in files:
        for batch in read_capture(path, batch_size=batch_size):
            start = time.perf_counter()
            run.manager.apply(batch)
            run.seconds += time.perf_counter() - start
            run.packets += len(batch)
            run.ip_bytes += int(batch.length.sum(dtype=np.uint64))
            for other in (run.truth, extra):
                if other is not None:
                    other.apply(batch)
            if progress is not None:
                progress(run.packets)
    return run


def analyze(files, config: ServiceConfig, opts: ReportOptions = ReportOptions(), batch_size: int = 65536,
            truth: bool = False, progress=None) -> tuple[dict, LocalRun]:
    """``(report, run)`` for captures analysed locally (see the module docstring); ``progress``
    as for :func:`run_local`."""
    run = run_local(files, config, batch_size, truth, progress=progress)
    report = build_report(LocalSource(run.manager), opts, mode="analyze", files=files, ingest=run.ingest(),
                          epoch_seconds=config.epoch_seconds,
                          truth=LocalSource(run.truth) if run.truth is not None else None)
    name_fingerprints(report)
    return report, run


# ====================================================================== accuracy vs memory
SWEEP_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
SWEEP_KINDS = {"hiddensketch": "heavy_hitters", "residualsketch": "hhh", "gapfilter_so": "gaps",
               "gapfilter_ao": "gaps", "gapfilter_straw": "gaps"}


def memory_sweep(files, config: ServiceConfig, opts: ReportOptions, batch_size: int = 65536,
                 factors=SWEEP_FACTORS) -> list[dict]:
    """F1 of each sweepable configured sketch at ``factors`` x its memory (one pass over the files).

    Rows ``{"sketch", "kind", "query", "memory_bytes", "f1", "precision", "recall", "unit", "spec_memory_bytes"}``
    (``memory_bytes``: what the sketch charges, an IPv6 tree included; ``spec_memory_bytes``: the ``memory_bytes``
    it was built with).
    LLM-Sketch is left out (its estimator dominates the cost and its answers are sizes, not sets).
    A sketch configured with ``weight = "bytes"`` is scored against byte truth (the ``exact`` kind
    counting bytes: keys above phi of the window's bytes), ``unit`` "bytes"; the others against
    packet truth, ``unit`` "packets".
    """
    from telesketch.report import TRUTH, add_accuracy, query_sections, raised_floors

    specs = {}
    for name, spec in config.sketches.items():
        memory = _configured_memory(spec) if spec.get("kind") in SWEEP_KINDS else None
        for f in factors if memory else ():
            specs[f"{name}@{f:g}"] = dict(spec, memory_bytes=max(1, int(memory * f)))
    if not specs:
        return []
    sweep = manager_for(specs, config, tolerant=True)
    specs_truth = {TRUTH: truth_specs(config.sketches)[TRUTH]}  # the byte truth is built from it below
    truths = {"packets": manager_for(specs_truth, config)}
    if any(spec.get("weight") == "bytes" for spec in specs.values()):  # byte-weighted sketches: byte truth
        truths["bytes"] = manager_for({n: dict(t, weight="bytes") for n, t in specs_truth.items()}, config)
    from telesketch.traces import read_capture

    for path in files:
        for batch in read_capture(path, batch_size=batch_size):
            sweep.apply(batch)
            for truth in truths.values():
                truth.apply(batch)
    source = LocalSource(sweep)
    tsources = {unit: LocalSource(truth) for unit, truth in truths.items()}
    stats = source.stats()
    last = min(opts.last or len(stats["epochs"]), len(stats["epochs"])) or 1
    rows = []
    for s in stats["sketches"]:
        if not s["active"]:
            continue
        query = SWEEP_KINDS[s["kind"]]
        spec = specs[s["name"]]  # the sweep's manager is built from specs alone
        unit = spec.get("weight", "packets")
        tsource = tsources[unit]
        sections = query_sections(_Only(source, query), opts, last, s["name"])
        truth_sections = query_sections(tsource, opts, last, TRUTH, floors=raised_floors(sections))
        report = dict(sections, truth=truth_sections)
        add_accuracy(report, source, tsource, opts, last)
        acc = report["accuracy"].get(query)
        if acc:
            rows.append({"sketch": s["name"].split("@")[0], "kind": s["kind"], "query": query,
                         "memory_bytes": s["memory_bytes"], "f1": acc["f1"], "precision": acc["precision"],
                         "recall": acc["recall"], "unit": unit,
                         "spec_memory_bytes": spec["memory_bytes"]})
    return rows


def _configured_memory(spec: dict) -> int | None:
    """``memory_bytes`` of a sketch spec, its parameter default when the spec leaves it out."""
    import importlib

    from telesketch.service.sketchset import KINDS

    if "memory_bytes" in spec:
        return int(spec["memory_bytes"])
    kind = KINDS[spec["kind"]]
    try:
        cls = getattr(importlib.import_module(kind.module), kind.cls)
        return int(cls(**{k: v for k, v in spec.items() if k not in ("kind", "device")}).params.memory_bytes)
    except Exception:  # noqa: BLE001 - not buildable here: not swept
        return None


class _Only:
    """A source that answers one query and refuses the rest (so a sweep asks each sketch once)."""

    def __init__(self, source, query: str):
        self.source, self.query = source, query

    def __getattr__(self, name):
        from telesketch.report import Unanswered

        method = getattr(self.source, name)
        wanted = {"heavy_hitters": "keys", "hhh": "hhh", "gaps": "gaps"}[self.query]
        if name != wanted:
            def refuse(*args, **kwargs):
                raise Unanswered("not asked in a sweep")
            return refuse
        if name == "keys":
            def keys(what, *args, **kwargs):
                if what != "heavy_hitters":
                    raise Unanswered("not asked in a sweep")
                return method(what, *args, **kwargs)
            return keys
        return method


def write_json(report: dict, path: str | Path | None) -> str:
    """The report as JSON text (bytes keys are already hex); written to ``path`` when given."""
    import json

    text = json.dumps(report, indent=1, sort_keys=False)
    if path:
        Path(path).write_text(text + "\n")
    return text
