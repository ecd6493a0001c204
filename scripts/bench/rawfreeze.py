#!/usr/bin/env python3
"""Raw FIFREEZE/FITHAW of the given mount points, for scripts/bench-freeze.sh: what the freeze
calls cost without the process start-up that `fsfreeze -f A && fsfreeze -f B` also pays, one
after the other (default) or in parallel (--parallel: one thread per mount, started once before
the first run and woken together, so no thread is created or exits near the calls).

Per run: sleep GAP, FIFREEZE every mount, then FITHAW in reverse order. Prints one JSON line per
run: freeze_ms (each call), pair_ms (first call's start to the last call's return), window_ms
(first call's start to the end of the last thaw). Every mount frozen here is thawed in a
finally block, whatever happens.

ONLY pass loop mounts created for the benchmark: never /, /work, /tmp.

Usage: rawfreeze.py [--parallel] --runs 20 --gap 0.2 MOUNT [MOUNT...]
"""
import argparse
import fcntl
import json
import os
import threading
import time

FIFREEZE = 0xC0045877
FITHAW = 0xC0045878


class Parallel:
    """One long-lived thread per mount; `freeze()` wakes them all and waits for every call."""

    def __init__(self, fds):
        self.fds = fds
        self.go = [threading.Event() for _ in fds]
        self.done = [threading.Event() for _ in fds]
        self.result = [None] * len(fds)  # (start_ns, end_ns) or an exception
        for i in range(len(fds)):
            threading.Thread(target=self._worker, args=(i,), daemon=True).start()

    def _worker(self, i):
        while True:
            self.go[i].wait()
            self.go[i].clear()
            t0 = time.monotonic_ns()
            try:
                fcntl.ioctl(self.fds[i], FIFREEZE, 0)  # releases the GIL
                self.result[i] = (t0, time.monotonic_ns())
            except OSError as e:
                self.result[i] = e
            self.done[i].set()

    def freeze(self, frozen, freeze_ns):
        for e in self.go:
            e.set()
        for e in self.done:
            e.wait()
            e.clear()
        for i, r in enumerate(self.result):
            if not isinstance(r, OSError):
                frozen.append(self.fds[i])
        for r in self.result:
            if isinstance(r, OSError):
                raise r
        freeze_ns.extend(end - start for start, end in self.result)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--gap", type=float, default=0.2, help="idle seconds before each run")
    ap.add_argument("--parallel", action="store_true")
    ap.add_argument("mounts", nargs="+")
    a = ap.parse_args()
    for m in a.mounts:
        if os.path.realpath(m) in ("/", "/work", "/tmp"):
            raise SystemExit(f"refusing to freeze {m}")
    fds = [os.open(m, os.O_RDONLY | os.O_DIRECTORY) for m in a.mounts]
    par = Parallel(fds) if a.parallel else None
    try:
        for _ in range(a.runs):
            time.sleep(a.gap)
            frozen = []
            freeze_ns = []
            try:
                t_start = time.monotonic_ns()
                if par:
                    par.freeze(frozen, freeze_ns)
                else:
                    for fd in fds:
                        t0 = time.monotonic_ns()
                        fcntl.ioctl(fd, FIFREEZE, 0)
                        freeze_ns.append(time.monotonic_ns() - t0)
                        frozen.append(fd)
                t_pair = time.monotonic_ns()
            finally:
                for fd in reversed(frozen):
                    try:
                        fcntl.ioctl(fd, FITHAW, 0)
                    except OSError:
                        pass
            t_end = time.monotonic_ns()
            print(json.dumps({
                "freeze_ms": [x / 1e6 for x in freeze_ns],
                "pair_ms": (t_pair - t_start) / 1e6,
                "window_ms": (t_end - t_start) / 1e6,
            }), flush=True)
    finally:
        for fd in fds:
            os.close(fd)


if __name__ == "__main__":
    main()
