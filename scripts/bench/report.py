#!/usr/bin/env python3
"""Turns the raw results of scripts/bench-freeze.sh into a table on stdout and, with
--markdown FILE, the same as a markdown section.

Usage: report.py RESULTS_DIR [--markdown FILE]

Statistics: median (statistics.median) and p90 by nearest rank (the ceil(0.9 n)-th smallest).
"""
import argparse
import collections
import datetime
import json
import math
import os
import statistics
import sys


def load_jsonl(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def p90(xs):
    s = sorted(xs)
    return s[max(0, math.ceil(0.9 * len(s)) - 1)]


def unix_ms(rfc3339):
    if not rfc3339:
        return None
    return datetime.datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp() * 1000


def fmt(x, nd=1):
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.{nd}f}"


class Table:
    def __init__(self, header, align=None):
        self.header = header
        self.rows = []
        # "l" or "r" per column; numbers right-aligned by default.
        self.align = align or (["l"] + ["r"] * (len(header) - 1))

    def add(self, *cells):
        self.rows.append([fmt(c) for c in cells])

    def text(self):
        cols = list(zip(self.header, *self.rows))
        w = [max(len(c) for c in col) for col in cols]

        def line(cells):
            return "  ".join(
                c.ljust(w[i]) if self.align[i] == "l" else c.rjust(w[i]) for i, c in enumerate(cells)
            ).rstrip()

        out = [line(self.header), "  ".join("-" * x for x in w)]
        out += [line(r) for r in self.rows]
        return "\n".join(out)

    def markdown(self):
        def esc(c):
            # Indented (sub-)rows keep their indent as an em space: markdown drops spaces.
            stripped = c.lstrip(" ")
            indent = "&emsp;" if len(stripped) < len(c) else ""
            return indent + stripped.replace("|", "\\|")

        out = ["| " + " | ".join(esc(h) for h in self.header) + " |",
               "|" + "|".join(" --- " if a == "l" else " ---: " for a in self.align) + "|"]
        out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in self.rows]
        return "\n".join(out)


class Out:
    """Collects the report once, renders it as text and as markdown."""

    def __init__(self):
        self.parts = []  # (kind, payload)

    def h(self, text):
        self.parts.append(("h", text))

    def p(self, text):
        self.parts.append(("p", text))

    def t(self, table):
        self.parts.append(("t", table))

    def items(self, pairs):
        self.parts.append(("items", pairs))

    def text(self):
        out = []
        for kind, x in self.parts:
            if kind == "h":
                out += ["", x, "=" * len(x) if not out else "-" * len(x)]
            elif kind == "p":
                out += [x]
            elif kind == "t":
                out += [x.text(), ""]
            elif kind == "items":
                w = max(len(k) for k, _ in x)
                out += [f"  {k.ljust(w)}  {v}" for k, v in x] + [""]
        return "\n".join(out).lstrip("\n") + "\n"

    def markdown(self):
        out = []
        first = True
        for kind, x in self.parts:
            if kind == "h":
                out += ["## " + x if first else "### " + x, ""]
                first = False
            elif kind == "p":
                out += [x, ""]
            elif kind == "t":
                out += [x.markdown(), ""]
            elif kind == "items":
                out += [f"- **{k}**: {v}" for k, v in x] + [""]
        return "\n".join(out).rstrip() + "\n"


def load_facts(results):
    """The (key, value) lines of RESULTS/facts.tsv, in order."""
    facts = []
    with open(os.path.join(results, "facts.tsv")) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("\t")
            facts.append((k, v))
    return facts


def stat_row(table, label, xs, note=""):
    xs = [x for x in xs if x is not None]
    if not xs:
        table.add(label, None, None, None, None, 0)
        return
    table.add(label, statistics.median(xs), p90(xs), min(xs), max(xs), str(len(xs)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--markdown")
    a = ap.parse_args()
    r = a.results

    facts = load_facts(r)
    fd = dict(facts)
    fs_a = fd.get("mount A", "ext4").split(",")[0]
    fs_b = fd.get("mount B", "?").split(",")[0]

    o = Out()
    o.h(f"quiesce freeze benchmark: {fd.get('date', '?')}, kernel {fd.get('kernel', '?').split()[0]}")
    o.items(facts)

    # ---------------------------------------------------------------- part 1
    q = load_jsonl(os.path.join(r, "p1_quiesce.jsonl"))
    dones = [x["done"] for x in q if x.get("done")]
    o.h(f"1. Freeze+thaw of two idle mounts (A {fs_a}, B {fs_b})")
    gap = dict(kv.split("=", 1) for kv in fd.get("settings", "").split() if "=" in kv).get("gap", "?")
    o.p(f"All times in ms. Every timed run starts after an idle gap of {gap}, so that no run "
        "profits from the previous thaw (see docs/BENCHMARKS.md, RCU); the last row shows what "
        "happens without it.")
    t = Table(["measurement", "median", "p90", "min", "max", "n"])

    def per_mount(d, key, fstype_index):
        ms = d["mounts"]
        return ms[fstype_index].get(key) if fstype_index < len(ms) else None

    def mount_by(d, suffix):
        for m in d["mounts"]:
            if m["path"].endswith(suffix):
                return m
        return {}

    stat_row(t, "(a) quiesce frozen_ms: first FIFREEZE to last thaw (incl. sh -c true)",
             [d.get("frozen_ms") for d in dones])
    stat_row(t, f"    quiesce freeze_ms, A ({fs_a})", [mount_by(d, "/mnt/a").get("freeze_ms") for d in dones])
    stat_row(t, f"    quiesce freeze_ms, B ({fs_b})", [mount_by(d, "/mnt/b").get("freeze_ms") for d in dones])
    stat_row(t, "    quiesce max(freeze_ms): the parallel freeze phase",
             [max((m.get("freeze_ms") or 0) for m in d["mounts"]) for d in dones])
    stat_row(t, "    quiesce sum(freeze_ms) of both mounts",
             [sum((m.get("freeze_ms") or 0) for m in d["mounts"]) for d in dones])
    stat_row(t, "    quiesce max(flush_ms): syncfs pre-flush (idle)",
             [max((m.get("flush_ms") or 0) for m in d["mounts"]) for d in dones])
    stat_row(t, "    quiesce command wall time (same runs)", [x["wall_us"] / 1000 for x in q])

    hf_path = os.path.join(r, "hyperfine.json")
    wall_note = ""
    if os.path.exists(hf_path):
        with open(hf_path) as f:
            hf = json.load(f)
        for res in hf["results"]:
            stat_row(t, f"(b) wall, hyperfine: {res['command']}", [x * 1000 for x in res["times"]])
        means = {res["command"]: (res["mean"] * 1000, res["stddev"] * 1000) for res in hf["results"]}
        wall_note = "hyperfine means: " + "; ".join(
            f"{k}: {m:.1f} ± {s:.1f} ms" for k, (m, s) in means.items())
    else:
        wl = load_jsonl(os.path.join(r, "wall_loop.jsonl"))
        stat_row(t, "(b) wall, loop: quiesce freeze --exec true",
                 [x["wall_us"] / 1000 for x in wl if x["name"] == "quiesce"])
        stat_row(t, "(b) wall, loop: fsfreeze -f A && -f B && -u B && -u A",
                 [x["wall_us"] / 1000 for x in wl if x["name"] == "fsfreeze"])

    ff = load_jsonl(os.path.join(r, "p1_fsfreeze.jsonl"))
    stat_row(t, "(c) fsfreeze -f A && fsfreeze -f B (sequential pair)", [x["pair_us"] / 1000 for x in ff])
    stat_row(t, "    fsfreeze -f A alone", [x["a_us"] / 1000 for x in ff])
    stat_row(t, "    fsfreeze -f B alone", [x["b_us"] / 1000 for x in ff])
    stat_row(t, "    fsfreeze window: -f A .. -u A (true in between)", [x["window_us"] / 1000 for x in ff])
    io = load_jsonl(os.path.join(r, "p1_ioctl.jsonl"))
    stat_row(t, "    raw FIFREEZE A then B (ioctls, no process start)", [x["pair_ms"] for x in io])
    stat_row(t, "    raw window: FIFREEZE A, B .. FITHAW B, A", [x["window_ms"] for x in io])
    iop = load_jsonl(os.path.join(r, "p1_ioctl_par.jsonl"))
    stat_row(t, "    raw FIFREEZE A and B in parallel (2 threads)", [x["pair_ms"] for x in iop])
    stat_row(t, "    raw parallel: each call", [y for x in iop for y in x["freeze_ms"]])
    stat_row(t, "    raw sequential: each call", [y for x in io for y in x["freeze_ms"]])
    io0 = load_jsonl(os.path.join(r, "p1_ioctl_b2b.jsonl"))
    stat_row(t, "    raw FIFREEZE A then B, back-to-back (no idle gap)", [x["pair_ms"] for x in io0])
    o.t(t)
    if wall_note:
        o.p(wall_note)

    if dones and io:
        qmax = statistics.median([max((m.get("freeze_ms") or 0) for m in d["mounts"]) for d in dones])
        seq = statistics.median([x["pair_ms"] for x in io])
        fpair = statistics.median([x["pair_us"] / 1000 for x in ff]) if ff else None
        par = statistics.median([x["pair_ms"] for x in iop]) if iop else None
        o.p(f"Freeze phase of both mounts (medians): quiesce, parallel, {qmax:.1f} ms; raw ioctls "
            f"in sequence {seq:.1f} ms" + (f", in parallel {par:.1f} ms" if par else "")
            + (f"; sequential fsfreeze processes {fpair:.1f} ms" if fpair else "") + ".")

    # Health of the quiesce runs of part 1 and 2.
    p2 = load_jsonl(os.path.join(r, "p2_stall.jsonl"))
    allq = q + [x["q"] for x in p2 if x.get("q")]
    rcs = collections.Counter(x["rc"] for x in allq)
    reasons = collections.Counter((x["done"] or {}).get("thaw_reason") for x in allq)
    outcomes = collections.Counter(m.get("outcome") for x in allq if x["done"] for m in x["done"]["mounts"])
    warns = collections.Counter(w for x in allq if x["done"] for w in x["done"].get("warnings", []))
    errors = collections.Counter(m.get("error") for x in allq if x["done"] for m in x["done"]["mounts"]
                                 if m.get("error"))
    health = [
        ("quiesce runs", f"{len(allq)} (exit codes {dict(rcs)}; thaw_reason {dict(reasons)}; "
                         f"mount outcomes {dict(outcomes)})"),
    ]
    for w, n in warns.items():
        health.append(("warning", f"{n}x {w}"))
    for e, n in errors.items():
        health.append(("mount error", f"{n}x {e}"))
    se = os.path.join(r, "quiesce.stderr")
    if os.path.exists(se):
        lines = [ln.strip() for ln in open(se) if ln.strip()]
        if lines:
            c = collections.Counter(lines)
            for ln, n in c.most_common(5):
                health.append(("stderr", f"{n}x {ln[:200]}"))

    # ---------------------------------------------------------------- part 2
    o.h(f"2. Longest write stall with dirty data on A ({fs_a})")
    o.p("Per run: a paced appender (4 KiB write() every ~1 ms, no fsync) runs on A; the "
        "dirty file is rewritten without sync (conv=notrunc), then `quiesce freeze --exec true` "
        "(with its syncfs pre-flush, or --no-flush) freezes A and B. Stall = the appender's longest "
        "single write(); its start is given relative to the first FIFREEZE (freeze_started_at, "
        "1 ms resolution). Sizes in MiB, times in ms.")
    t2 = Table(["#", "variant", "Dirty before dd", "Dirty at freeze", "Writeback", "flush_ms A",
                "freeze_ms A", "frozen_ms", "longest stall", "stall start", "cmd wall", "writes"],
               align=["r", "l"] + ["r"] * 10)
    checks = []
    for i, x in enumerate(p2, 1):
        d = (x.get("q") or {}).get("done") or {}
        ma = mount_by(d, "/mnt/a") if d else {}
        w = x["writer"]
        fs_ms = unix_ms(d.get("freeze_started_at"))
        rel = w["max_start_unix_ms"] - fs_ms if fs_ms else None
        t2.add(str(i), x["variant"], x["dirty_before_kb"] / 1024, x["dirty_kb"] / 1024,
               x["writeback_kb"] / 1024, ma.get("flush_ms"), ma.get("freeze_ms"), d.get("frozen_ms"),
               w["max_ms"], rel, x["q"]["wall_us"] / 1000, str(w["writes"]))
        th = unix_ms(d.get("thawed_at"))
        if th and w["end_unix_ms"] < th:
            checks.append(f"run {i}: the writer ended before the thaw: its stall may be cut short")
        if fs_ms and w["start_unix_ms"] > fs_ms:
            checks.append(f"run {i}: the writer started after the freeze")
    o.t(t2)

    t3 = Table(["variant", "runs", "stall median", "stall max", "frozen_ms median", "frozen_ms max",
                "freeze_ms A median", "flush_ms A median", "cmd wall median", "Dirty at freeze median"])
    for v in ("flush", "no-flush"):
        xs = [x for x in p2 if x["variant"] == v]
        if not xs:
            continue
        ds = [(x.get("q") or {}).get("done") or {} for x in xs]

        def med(vals):
            vals = [y for y in vals if y is not None]
            return statistics.median(vals) if vals else None

        def mx(vals):
            vals = [y for y in vals if y is not None]
            return max(vals) if vals else None

        stalls = [x["writer"]["max_ms"] for x in xs]
        frozen = [d.get("frozen_ms") for d in ds]
        t3.add("with pre-flush (default)" if v == "flush" else "--no-flush", str(len(xs)),
               med(stalls), mx(stalls), med(frozen), mx(frozen),
               med([mount_by(d, "/mnt/a").get("freeze_ms") for d in ds if d]),
               med([mount_by(d, "/mnt/a").get("flush_ms") for d in ds if d]),
               med([x["q"]["wall_us"] / 1000 for x in xs]), med([x["dirty_kb"] / 1024 for x in xs]))
    o.t(t3)
    base = [x["writer"]["p50_ms"] for x in p2]
    if base:
        o.p(f"Appender's median write() over all runs: {statistics.median(base):.3f} ms "
            f"(its p99: {statistics.median([x['writer']['p99_ms'] for x in p2]):.3f} ms).")
    for c in checks:
        o.p("CHECK: " + c)

    o.h("Quiesce run health")
    o.items(health)

    sys.stdout.write(o.text())
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(o.markdown())
        print(f"\nmarkdown written to {a.markdown}")


if __name__ == "__main__":
    main()
