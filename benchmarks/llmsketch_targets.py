"""Issue #19's target rows 1-6 from ``bench_llmsketch.py --sections paper --json FILE`` (rows 1-6; row 7,
throughput, is measured by ``bench_ingest.py``).

Per target row, model and trace (N, N-unseen, G seed s, each held-out capture): met / not met / n.a.,
with the points behind it; then every point's figures (best constant, oracle, the models, Count-Min, CU,
Elastic). Applicability, as the issue states it: a row applies at a point and metric where the oracle
reaches <= 0.5x the best constant there (rows 2, 3, 6). Its analogue for the other rows: row 1 applies
where the oracle's all-flow ARE and AAE are below Count-Min's and CU's; row 4 where the oracle's HH F1
meets the target; row 5 (AUC) wherever the AUC is defined (both classes present).

    python llmsketch_targets.py run.json [more.json ...]   # later files add models / traces
"""
from __future__ import annotations

import argparse
import json
import math

BEST_OF = ("constant(0)", "constant(0.5)", "constant(1)")
CM, CU, ELASTIC = "count-min (4 B counters)", "CU (4 B counters)", "Elastic (1/4 heavy, 1 B light counters)"
#: the models judged, in table order, with short names (rows absent from the JSON are skipped)
MODELS = {
    "shipped trees (default, calibrated to T)": "shipped trees",
    "shipped LM head (calibrated to T)": "shipped LM head",
    "candidate trees (--candidate-trees, calibrated to T)": "candidate trees",  # CANDIDATE_TREES_LABEL
    "lm (MiniLM embedder + MLP head, trained here, calibrated)": "LM head trained here",
    "trees (sklearn HGB, calibrated)": "trees trained here",
}
SHIPPED = "shipped trees (default, calibrated to T)"
CANDIDATE_TREES_LABEL = "candidate trees (--candidate-trees, calibrated to T)"  # an unnamed --candidate-trees DIR
CANDIDATE_SUFFIX = " (--candidate-trees, calibrated to T)"


def short_name(label: str) -> str | None:
    """A model's column name: :data:`MODELS`' short name, ``candidate trees NAME`` for a named
    ``--candidate-trees NAME=DIR`` row, ``None`` for rows that are not models judged here."""
    if label in MODELS:
        return MODELS[label]
    if label.startswith("candidate trees ") and label.endswith(CANDIDATE_SUFFIX):
        return label[: -len(CANDIDATE_SUFFIX)]
    return None


AUC_TARGET = {"N": 0.90, "G": 0.80, "N-unseen": 0.65, "held-out": 0.70}
ROW_TRACES = {1: ("N", "G", "held-out"), 2: ("N",), 3: ("G",), 4: ("N", "G"), 5: ("N", "G", "N-unseen", "held-out"),
              6: ("N-unseen", "held-out")}
ROW_TEXT = {1: "all-flow ARE and AAE below Count-Min and CU at every memory point",
            2: "ARE >= T and top-100 ARE <= 0.6x best constant at every point, <= 0.5x at two of three",
            3: "ARE >= T and top-100 ARE <= 0.7x best constant at 32 and 64 KiB",
            4: "HH F1 >= max(0.90, best constant - 0.02)",
            5: "first-packet AUC (flow >= T) >= 0.90 / 0.80 / 0.65 / 0.70 (N / G / N-unseen / held-out)",
            6: "no harm: <= 1.1x the best constant on rows 1-2's metrics (ARE, AAE, ARE >= T, top-100 ARE)"}


def group(name: str) -> tuple[str, str]:
    """``(kind, column)`` of a bench trace name: kind N / N-unseen / G / held-out."""
    if name.startswith("N-unseen"):
        return "N-unseen", "N-unseen"
    if name.startswith("N:"):
        return "N", "N"
    if name.startswith("G:"):
        return "G", "G seed " + name.split("seed ")[1].split()[0]
    short = name.split()[1].rstrip(",").replace(".pcap", "").replace("stopddos_", "").replace("_test-cc-capture-1", "")
    return "held-out", "held-out " + short


def best_constant(rows: dict, metric: str) -> float:
    vals = [rows[c][metric] for c in BEST_OF]
    return max(vals) if metric == "F1" else min(vals)


def ratio(v: float, best: float) -> float:
    return v / best if best > 0 else (1.0 if v == best else math.inf)


def checks(row: int, kind: str, mem_kib: float, rows: dict, model: str):
    """``[(applicable, ok, text)]`` for one point (one per metric checked there)."""
    r, o = rows[model], rows["oracle"]
    out = []
    if row == 1:
        ok = all(r[m] < rows[b][m] for m in ("ARE", "AAE") for b in (CM, CU))
        app = all(o[m] < rows[b][m] for m in ("ARE", "AAE") for b in (CM, CU))
        out.append((app, ok, f"ARE {r['ARE']:.3g} / AAE {r['AAE']:.3g} vs CU {rows[CU]['ARE']:.3g} / "
                             f"{rows[CU]['AAE']:.3g}"))
    elif row in (2, 3):
        if row == 3 and mem_kib not in (32, 64):
            return []
        for m in ("ARE>=T", "top100 ARE"):
            best = best_constant(rows, m)
            if math.isnan(best) or math.isnan(r[m]):
                continue
            x, xo = ratio(r[m], best), ratio(o[m], best)
            out.append((xo <= 0.5, x, f"{m} {x:.2f}x (oracle {xo:.2f}x)"))
    elif row == 4:
        target = max(0.90, best_constant(rows, "F1") - 0.02)
        out.append((o["F1"] >= target, r["F1"] >= target, f"F1 {r['F1']:.3f} vs {target:.3f} (oracle {o['F1']:.3f})"))
    elif row == 5:
        auc = r.get("AUC", float("nan"))
        if not math.isnan(auc):
            out.append((True, auc >= AUC_TARGET[kind], f"AUC {auc:.3f}"))
    elif row == 6:
        for m in ("ARE", "AAE", "ARE>=T", "top100 ARE"):
            best = best_constant(rows, m)
            if math.isnan(best) or math.isnan(r[m]):
                continue
            x, xo = ratio(r[m], best), ratio(o[m], best)
            out.append((xo <= 0.5, x <= 1.1, f"{m} {x:.2f}x (oracle {xo:.2f}x)"))
    return out


def verdict(row: int, points) -> str:
    """``points``: ``[(memory KiB, [(applicable, ok, text)])]`` of one model and trace."""
    if row == 2:  # per metric: applicable points all <= 0.6x and at least two <= 0.5x
        parts, any_app, all_ok = [], False, True
        for m in ("ARE>=T", "top100 ARE"):
            got = [(mem, app, x) for mem, cs in points for app, x, text in cs if text.startswith(m)]
            app = [(mem, x) for mem, a, x in got if a]
            if not app:
                parts.append(f"{m}: n.a.")
                continue
            any_app = True
            ok = all(x <= 0.6 for _, x in app) and sum(x <= 0.5 for _, x in app) >= min(2, len(app))
            all_ok &= ok
            parts.append(f"{m} " + " / ".join(f"{x:.2f}x" for _, x in app) + ("" if len(app) == len(got) else
                                                                               f" ({len(app)} of {len(got)} points apply)"))
        return ("n.a." if not any_app else "**met**" if all_ok else "not met") + ": " + "; ".join(parts)
    if row == 3:
        points = [(mem, [(a, x <= 0.7, t) for a, x, t in cs]) for mem, cs in points]
    app = [(mem, ok, text) for mem, cs in points for a, ok, text in cs if a]
    total = sum(len(cs) for _, cs in points)
    if not app:
        return "n.a." + (" (no point defined)" if total == 0 else f" (oracle fails at all {total})")
    good = sum(ok for _, ok, _ in app)
    if row == 5:  # every AUC, met or not
        return (f"{'**met**' if good == len(app) else 'not met'} ({good}/{len(app)}): "
                + " / ".join(text.split()[1] for _, _, text in app))
    misses = [f"{mem:g} KiB {text}" for mem, ok, text in app if not ok]
    head = "**met**" if good == len(app) else "not met"
    extra = f"; {total - len(app)} n.a." if total > len(app) else ""
    return f"{head} ({good}/{len(app)}{extra})" + (": " + "; ".join(misses[:3]) + (" ..." if len(misses) > 3 else "")
                                                  if misses else "")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", nargs="+")
    args = ap.parse_args(argv)
    traces: dict[str, tuple[str, list]] = {}
    commands = []
    for path in args.json:
        data = json.load(open(path))
        commands.append(data["command"])
        for t in data["traces"]:
            kind, col = group(t["name"])
            have = traces.setdefault(col, (kind, []))[1]
            for p in t["points"]:
                same = [q for q in have if q["memory"] == p["memory"]]
                if same:
                    same[0]["rows"].update({k: v for k, v in p["rows"].items() if k not in same[0]["rows"]})
                else:
                    have.append(p)
    print("commands:\n\n" + "\n".join(f"    {c}" for c in commands))
    present = {m for _, pts in traces.values() for p in pts for m in p["rows"]}
    models = [m for m in MODELS if m in present]
    named = sorted(m for m in present if m not in MODELS and short_name(m) is not None)
    models[1 + models.index(SHIPPED) if SHIPPED in models else 0:0] = named  # named candidates after shipped trees
    for row in range(1, 7):
        print(f"\n### Row {row}: {ROW_TEXT[row]}\n")
        print("| trace | " + " | ".join(short_name(m) for m in models) + " |")
        print("|---|" + "---|" * len(models))
        for col, (kind, pts) in traces.items():
            if kind not in ROW_TRACES[row]:
                continue
            cells = []
            for m in models:
                have = [(p["memory"] / 1024, p["rows"]) for p in pts if m in p["rows"]]
                cells.append(verdict(row, [(mem, checks(row, kind, mem, rows, m)) for mem, rows in have])
                             if have else "–")
            print(f"| {col} | " + " | ".join(cells) + " |")
    print("\n<details><summary>every point (best constant: the best of 0 / 0.5 / 1 for that cell)</summary>\n")
    print("| trace | memory (T) | metric | best constant | oracle | " + " | ".join(short_name(m) for m in models)
          + " | Count-Min | CU | Elastic |")
    print("|---|---|---|---|---|" + "---|" * (len(models) + 3))
    for col, (kind, pts) in traces.items():
        for p in pts:
            rows = p["rows"]
            for metric in ("ARE", "AAE", "ARE>=T", "top100 ARE", "F1", "AUC"):
                best = "" if metric == "AUC" else f"{best_constant(rows, metric):.4g}"
                vals = [rows.get(m, {}).get(metric, float("nan")) for m in ["oracle", *models, CM, CU, ELASTIC]]
                if metric == "AUC":
                    vals[0] = float("nan")
                print(f"| {col} | {p['memory'] / 1024:g} KiB ({p['pivot']}) | {metric} | {best} | "
                      + " | ".join("–" if math.isnan(v) else f"{v:.4g}" for v in vals) + " |")
    print("\n</details>")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
