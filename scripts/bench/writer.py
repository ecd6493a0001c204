#!/usr/bin/env python3
"""Paced appender for scripts/bench-freeze.sh: the "application" whose write stall is measured.

Appends 4 KiB records to FILE (O_APPEND, no fsync, no O_SYNC) for SECONDS, one write() every
INTERVAL_MS (paced so that the writer itself adds only ~4 MiB/s of dirty data and does not
drown the 256 MiB the benchmark dirties on purpose), timing every write() with
time.monotonic_ns(). A write() to a frozen filesystem blocks until the thaw, so the longest
single write() is the stall this writer saw. Prints one JSON line at the end.

Usage: writer.py FILE --seconds 3 --interval-ms 1 --ready READY_FILE
"""
import argparse
import json
import math
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--interval-ms", type=float, default=1.0)
    ap.add_argument("--record-bytes", type=int, default=4096)
    ap.add_argument("--ready", help="created once the file is open and the loop starts")
    a = ap.parse_args()

    record = (b"q" * (a.record_bytes - 1)) + b"\n"
    fd = os.open(a.file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    lat_ns = []
    max_ns = -1
    max_start_unix_ns = 0
    interval = a.interval_ms / 1000.0
    start_unix_ns = time.time_ns()
    start = time.monotonic_ns()
    end = start + int(a.seconds * 1e9)
    if a.ready:
        with open(a.ready, "w") as f:
            f.write(f"{os.getpid()}\n")
    try:
        while True:
            t0 = time.monotonic_ns()
            if t0 >= end:
                break
            os.write(fd, record)
            dt = time.monotonic_ns() - t0
            lat_ns.append(dt)
            if dt > max_ns:
                max_ns = dt
                # Wall clock of the stall's start, to line it up with quiesce's freeze_started_at.
                max_start_unix_ns = start_unix_ns + (t0 - start)
            if interval > 0:
                time.sleep(interval)
    finally:
        os.close(fd)
    end_unix_ns = start_unix_ns + (time.monotonic_ns() - start)

    lat_ns.sort()
    n = len(lat_ns)

    def pct(p: float) -> float:
        if not n:
            return 0.0
        k = max(0, min(n - 1, math.ceil(p * n) - 1))  # nearest rank
        return lat_ns[k] / 1e6

    print(json.dumps({
        "writes": n,
        "bytes": n * a.record_bytes,
        "max_ms": max_ns / 1e6 if n else None,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "over_10ms": sum(1 for x in lat_ns if x > 10_000_000),
        "max_start_unix_ms": max_start_unix_ns / 1e6,
        "start_unix_ms": start_unix_ns / 1e6,
        "end_unix_ms": end_unix_ns / 1e6,
    }), flush=True)


if __name__ == "__main__":
    main()
