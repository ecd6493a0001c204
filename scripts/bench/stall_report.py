#!/usr/bin/env python3
"""The table of scripts/bench-stall.sh, from its raw JSON lines (also from a --keep file):

  stall_report.py RAW.jsonl K HOLD_MS

Per dirty size and freezer: median (min-max) of the longest writer stall, the time to all
frozen, the time to thaw and the frozen window; then quiesce's stall against the others. The
targets of issue 16 are set at hold 0; with a hold, the hold is part of every freezer's stall,
so the comparison is made on the stall beyond the hold and no target is judged.
"""
import json
import statistics
import sys

FREEZERS = ["quiesce", "quiesce_normal_rcu", "fsfreeze", "qga", "floor", "floor_expedited",
            "floor_expedited_flush"]
# Issue 16's targets: against the expedited floor (<= 1.2x at every dirty size) and qemu-ga with
# its default settings (<= 0.1x at 0 MiB, <= 0.25x at 256 MiB); the others for information.
TARGETS = (("floor_expedited", {None: 1.2}), ("qga", {0: 0.1, 256: 0.25}), ("floor", {}),
           ("quiesce_normal_rcu", {}), ("fsfreeze", {}))


def fmt(xs):
    return f"{statistics.median(xs):.0f} ({min(xs):.0f}-{max(xs):.0f})"


def main():
    rows = [json.loads(line) for line in open(sys.argv[1])]
    k, hold = sys.argv[2], float(sys.argv[3])
    print(f"{k} loop filesystems (ext4 and xfs in turn), hold {hold:.0f} ms; "
          "median (min-max) over the runs, ms\n")
    extra = " stall beyond the hold |" if hold else ""
    print(f"| dirty MiB | freezer | longest writer stall |{extra} time to all frozen | "
          "time to thaw | window |")
    print("| --- | --- | --- |" + (" --- |" if hold else "") + " --- | --- | --- |")
    medians = {}
    sizes = sorted({r["dirty_mib"] for r in rows})
    for d in sizes:
        for f in FREEZERS:
            rs = [r for r in rows if r["dirty_mib"] == d and r["freezer"] == f]
            if not rs:
                continue
            stall = [r["longest_stall_ms"] for r in rs]
            beyond = [s - hold for s in stall]
            medians[(d, f)] = statistics.median(beyond)
            cell = f" {fmt(beyond)} |" if hold else ""
            print(f"| {d} | {f} | {fmt(stall)} |{cell} {fmt([r['to_frozen_ms'] for r in rs])} | "
                  f"{fmt([r['to_thawed_ms'] for r in rs])} | {fmt([r['window_ms'] for r in rs])} |")
    print()
    what = "stall beyond the hold" if hold else "longest stall"
    for d in sizes:
        q = medians.get((d, "quiesce"))
        parts = []
        for other, target in TARGETS:
            o = medians.get((d, other))
            if q and o:
                verdict = ""
                limit = target.get(d, target.get(None))
                if limit is not None and not hold:
                    verdict = " (target <= %.2fx: %s)" % (limit, "met" if q / o <= limit else "MISSED")
                parts.append(f"{q / o:.2f}x {other}{verdict}")
        if parts:
            print(f"- dirty {d} MiB: quiesce's {what} is " + ", ".join(parts))
    if hold:
        print("- the targets are set at hold 0; with a hold, it is part of every freezer's stall")


if __name__ == "__main__":
    main()
