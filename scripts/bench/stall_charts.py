#!/usr/bin/env python3
"""The charts of scripts/bench-stall.sh, drawn with gnuplot from its raw JSON lines (the --keep
files, e.g. docs/bench-results/*/stall-h*.jsonl):

  stall_charts.py OUT_DIR RAW.jsonl...

Writes into OUT_DIR, as PNG:
- stall-by-freezer-h{HOLD}.png, one per hold: the longest writer stall of each freezer, per
  dirty size, median over the runs with the min-max range;
- stall-by-mounts.png, when the raw data holds two or more numbers of filesystems (bench-stall.sh
  --mounts "2 4 8"): the median longest stall against the number of filesystems, one line per
  freezer and dirty size.
Prints the names of the files it wrote. Needs gnuplot (Debian: apt-get install gnuplot-nox).
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

FREEZERS = ["quiesce", "quiesce_normal_rcu", "fsfreeze", "qga", "floor", "floor_expedited"]
LABELS = {"quiesce": "quiesce", "quiesce_normal_rcu": "quiesce, expedite_rcu: false",
          "fsfreeze": "fsfreeze (util-linux)", "qga": "QEMU guest agent",
          "floor": "parallel FIFREEZE floor", "floor_expedited": "floor, RCU expedited"}
COLOURS = {"quiesce": "#1f77b4", "quiesce_normal_rcu": "#9ecae1", "fsfreeze": "#d62728",
           "qga": "#ff7f0e", "floor": "#7f7f7f", "floor_expedited": "#2ca02c"}
TERMINAL = "set terminal pngcairo size 960,540 font 'sans,11' noenhanced"


def gnuplot(script, workdir):
    subprocess.run(["gnuplot"], input=script, text=True, check=True, cwd=workdir)


def by_freezer(rows, hold, out, work):
    sizes = sorted({r["dirty_mib"] for r in rows})
    freezers = [f for f in FREEZERS if any(r["freezer"] == f for r in rows)]
    ks = sorted({r["mounts"] for r in rows})
    data = os.path.join(work, f"by-freezer-{hold}.dat")
    with open(data, "w") as f:
        f.write("# dirty_mib " + " ".join(f"{x}_median {x}_min {x}_max" for x in freezers) + "\n")
        for d in sizes:
            cells = []
            for fr in freezers:
                s = [r["longest_stall_ms"] for r in rows if r["dirty_mib"] == d and r["freezer"] == fr]
                cells += [statistics.median(s), min(s), max(s)] if s else ["NaN"] * 3
            f.write(f'"{d} MiB dirty" ' + " ".join(str(c) for c in cells) + "\n")
    plots = []
    for i, fr in enumerate(freezers):
        c = 2 + 3 * i
        plots.append(f"'{data}' using {c}:{c + 1}:{c + 2}:xtic(1) title '{LABELS[fr]}' "
                     f"lc rgb '{COLOURS[fr]}'")
    png = os.path.join(out, f"stall-by-freezer-h{hold:g}.png")
    k = "/".join(str(x) for x in ks)
    gnuplot(f"""{TERMINAL}
set output '{png}'
set title 'Longest writer stall during a snapshot: {k} loop filesystems, hold {hold:g} ms (median, min-max)'
set ylabel 'longest stall (ms)'
set yrange [0:*]
set style data histograms
set style histogram errorbars gap 1 lw 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set xrange [-0.6:{len(sizes) - 0.4}]
set key outside bottom center horizontal
set grid ytics
plot {", ".join(plots)}
""", work)
    return png


def by_mounts(rows, out, work):
    ks = sorted({r["mounts"] for r in rows})
    if len(ks) < 2:
        return None
    plots = []
    for fr in [f for f in FREEZERS if any(r["freezer"] == f for r in rows)]:
        for j, d in enumerate(sorted({r["dirty_mib"] for r in rows})):
            data = os.path.join(work, f"by-mounts-{fr}-{d}.dat")
            with open(data, "w") as f:
                for k in ks:
                    s = [r["longest_stall_ms"] for r in rows
                         if r["freezer"] == fr and r["dirty_mib"] == d and r["mounts"] == k]
                    if s:
                        f.write(f"{k} {statistics.median(s)}\n")
            plots.append(f"'{data}' using 1:2 with linespoints title '{LABELS[fr]}, {d} MiB dirty' "
                         f"lc rgb '{COLOURS[fr]}' dt {j + 1} pt {j + 5}")
    holds = "/".join(f"{h:g}" for h in sorted({r["hold_ms"] for r in rows}))
    png = os.path.join(out, "stall-by-mounts.png")
    gnuplot(f"""{TERMINAL}
set output '{png}'
set title 'Longest writer stall against the number of filesystems (median; hold {holds} ms)'
set xlabel 'loop filesystems frozen together'
set ylabel 'longest stall (ms)'
set xtics ({", ".join(str(k) for k in ks)})
set yrange [0:*]
set key top left
set grid
plot {", ".join(plots)}
""", work)
    return png


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    if not shutil.which("gnuplot"):
        sys.exit("stall_charts.py: gnuplot is missing (Debian/Ubuntu: apt-get install gnuplot-nox)")
    out = os.path.abspath(sys.argv[1])
    os.makedirs(out, exist_ok=True)
    rows = [json.loads(line) for path in sys.argv[2:] for line in open(path) if line.strip()]
    with tempfile.TemporaryDirectory() as work:
        for hold in sorted({r["hold_ms"] for r in rows}):
            print(by_freezer([r for r in rows if r["hold_ms"] == hold], hold, out, work))
        png = by_mounts(rows, out, work)
        if png:
            print(png)
        else:
            print("stall_charts.py: one number of filesystems in the data: no stall-by-mounts chart "
                  "(bench-stall.sh --mounts \"2 4 8\" measures several)", file=sys.stderr)


if __name__ == "__main__":
    main()
