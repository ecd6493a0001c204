#!/usr/bin/env python3
"""The application of scripts/bench-stall.sh: appends 4 KiB records to FILE, one every
INTERVAL_MS, with an fdatasync every SYNC_EVERY records (a database's log writer in miniature),
and times every write() and fdatasync() with time.monotonic_ns(). A call on a frozen filesystem
blocks until the thaw, so the longest call is the stall this writer saw.

It writes "ready" on stdout once the file is open, runs until its stdin reaches end-of-file,
then prints one JSON line: calls, the longest call (ms) and when it started (monotonic ns, the
same clock as the orchestrator's), and the p50/p99 call times.

Usage: appender.py FILE [--interval-ms 1] [--sync-every 8] [--record-bytes 4096]
"""
import argparse
import json
import math
import os
import select
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--interval-ms", type=float, default=1.0)
    ap.add_argument("--sync-every", type=int, default=8)
    ap.add_argument("--record-bytes", type=int, default=4096)
    a = ap.parse_args()

    record = (b"a" * (a.record_bytes - 1)) + b"\n"
    fd = os.open(a.file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    durations = []
    longest, longest_at = -1, 0
    interval = a.interval_ms / 1000.0
    print("ready", flush=True)
    n = 0
    try:
        while True:
            # Stop when the orchestrator closes our stdin (checked without blocking).
            if select.select([sys.stdin], [], [], 0)[0] and not sys.stdin.readline():
                break
            t0 = time.monotonic_ns()
            os.write(fd, record)
            n += 1
            if a.sync_every and n % a.sync_every == 0:
                os.fdatasync(fd)
            dt = time.monotonic_ns() - t0
            durations.append(dt)
            if dt > longest:
                longest, longest_at = dt, t0
            if interval > 0:
                time.sleep(interval)
    finally:
        os.close(fd)
    durations.sort()

    def pct(p: float) -> float:
        if not durations:
            return 0.0
        k = max(0, min(len(durations) - 1, math.ceil(p * len(durations)) - 1))
        return durations[k] / 1e6

    print(json.dumps({
        "calls": len(durations),
        "longest_ms": longest / 1e6 if durations else None,
        "longest_at_ns": longest_at,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
    }), flush=True)


if __name__ == "__main__":
    main()
