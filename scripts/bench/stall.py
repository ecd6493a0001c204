#!/usr/bin/env python3
"""The write-stall comparison of scripts/bench-stall.sh: the longest stall that applications
see while their filesystems are frozen and thawed, for four freezers on the same mounts, in the
same run, alternating:

  quiesce   the daemon's HTTP API: POST /v1/snapshots {"mounts": [...]}, GET ?wait=frozen,
            (hold), POST .../thaw (answered once thawed), GET ?wait=done
  fsfreeze  util-linux: `fsfreeze -f M` for each mount in turn, (hold), `fsfreeze -u` in reverse
  qga       the QEMU guest agent on a unix socket (hooks off): guest-fsfreeze-freeze-list with
            the mounts, (hold), guest-fsfreeze-thaw
  quiesce_normal_rcu
            the same through a second daemon with `freeze.expedite_rcu: false`
  floor     this process: syncfs on every mount in parallel, FIFREEZE on all in parallel from
            threads started beforehand, (hold), FITHAW in parallel: what the kernel costs
  floor_expedited
            the floor with /sys/kernel/rcu_expedited at 1 around the FIFREEZE calls (set after
            the syncfs, back to 0 as soon as they returned, as quiesce does): the kernel's limit
  floor_expedited_flush
            (not run by default) the same with the knob at 1 from before the syncfs: whether
            expedited grace periods during the pre-flush change anything

Per run and freezer: one appender per mount (scripts/bench/appender.py: 4 KiB records every
millisecond, fdatasync every 8), 300 ms of steady writing, DIRTY MiB of unsynced data spread
over the mounts, then the freeze (the clock starts), the hold, the thaw, 300 ms more writing.
Prints one JSON line per (run, freezer): time to all frozen, time to thaw (request to answer),
the window (freeze request to thawed), each writer's longest call.

ONLY pass loop mounts made for the benchmark: never /, /work, /tmp.

Usage: stall.py --mounts M... --runs R --dirty-mib D --hold-ms H --quiesce-url URL
                [--quiesce-normal-rcu-url URL] --qga-socket PATH
                [--freezers quiesce,quiesce_normal_rcu,fsfreeze,qga,floor,floor_expedited]

/sys/kernel/rcu_expedited is global: floor_expedited runs only when it reads 0, and puts it
back to 0 on every path (the caller's EXIT trap does too).
"""
import argparse
import ctypes
import fcntl
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

import signing

RCU_EXPEDITED = "/sys/kernel/rcu_expedited"
FIFREEZE = 0xC0045877
FITHAW = 0xC0045878
HERE = os.path.dirname(os.path.abspath(__file__))
LIBC = ctypes.CDLL("libc.so.6", use_errno=True)


def now() -> int:
    return time.monotonic_ns()


class Quiesce:
    """The agent through its HTTP API (auth none on loopback: the benchmark's daemon)."""

    def __init__(self, url, mounts):
        u = urllib.parse.urlsplit(url)
        self.host, self.port, self.mounts, self.id = u.hostname, u.port, mounts, None

    def call(self, method, path, body=None):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Connection": "close", **signing.headers(method, path, data or b"")}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        out = json.loads(resp.read() or b"null")
        conn.close()
        if resp.status >= 300:
            raise RuntimeError(f"{method} {path}: {resp.status} {out}")
        return out

    def freeze(self):
        snap = self.call("POST", "/v1/snapshots", {"mounts": self.mounts})
        self.id = snap["id"]
        snap = self.call("GET", f"/v1/snapshots/{self.id}?wait=frozen&timeout_ms=60000")
        if snap["state"] != "frozen":
            raise RuntimeError(f"quiesce did not freeze: {snap}")

    def thaw(self):
        self.call("POST", f"/v1/snapshots/{self.id}/thaw", {"storage_snapshot": "taken"})

    def settle(self):
        done = self.call("GET", f"/v1/snapshots/{self.id}?wait=done&timeout_ms=60000")
        if done["state"] != "succeeded":
            raise RuntimeError(f"quiesce snapshot did not succeed: {done}")


class Fsfreeze:
    """util-linux fsfreeze, one process per mount and step, as an admin script does it."""

    def __init__(self, mounts):
        self.mounts = mounts

    def freeze(self):
        for m in self.mounts:
            subprocess.run(["fsfreeze", "-f", m], check=True)

    def thaw(self):
        for m in reversed(self.mounts):
            subprocess.run(["fsfreeze", "-u", m], check=True)

    def settle(self):
        pass


class Qga:
    """qemu-ga's QMP-like protocol on its unix socket; one connection for the whole run."""

    def __init__(self, path, mounts):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.file = self.sock.makefile("rwb")
        self.mounts = mounts
        self.call("guest-sync", {"id": 4711})

    def call(self, cmd, args=None):
        msg = {"execute": cmd}
        if args is not None:
            msg["arguments"] = args
        self.file.write(json.dumps(msg).encode() + b"\n")
        self.file.flush()
        while True:
            line = self.file.readline()
            if not line:
                raise RuntimeError("qemu-ga closed the connection")
            reply = json.loads(line)
            if "error" in reply:
                raise RuntimeError(f"qemu-ga {cmd}: {reply['error']}")
            if "return" in reply:
                return reply["return"]

    def freeze(self):
        n = self.call("guest-fsfreeze-freeze-list", {"mountpoints": self.mounts})
        if n != len(self.mounts):
            raise RuntimeError(f"qemu-ga froze {n} of {len(self.mounts)}")

    def thaw(self):
        self.call("guest-fsfreeze-thaw")

    def settle(self):
        pass


class Floor:
    """syncfs then FIFREEZE on every mount at once, from threads that already exist."""

    def __init__(self, mounts, expedite=False):
        self.expedite = expedite
        self.fds = [os.open(m, os.O_RDONLY | os.O_DIRECTORY) for m in mounts]
        self.jobs = [None] * len(self.fds)
        self.go = [threading.Event() for _ in self.fds]
        self.done = [threading.Event() for _ in self.fds]
        self.errors = []
        for i in range(len(self.fds)):
            threading.Thread(target=self.worker, args=(i,), daemon=True).start()

    def worker(self, i):
        while True:
            self.go[i].wait()
            self.go[i].clear()
            try:
                for step in self.jobs[i]:
                    if step == "syncfs":
                        if LIBC.syncfs(self.fds[i]) != 0:
                            raise OSError(ctypes.get_errno(), "syncfs")
                    else:
                        fcntl.ioctl(self.fds[i], step, 0)
            except OSError as e:
                self.errors.append(e)
            self.done[i].set()

    def all(self, steps):
        for i in range(len(self.fds)):
            self.jobs[i] = steps
            self.go[i].set()
        for d in self.done:
            d.wait()
            d.clear()
        if self.errors:
            e, self.errors = self.errors[0], []
            raise e

    def freeze(self):
        if not self.expedite:
            self.all(["syncfs"])
            self.all([FIFREEZE])
            return
        with open(RCU_EXPEDITED) as f:
            if f.read().strip() != "0":
                raise RuntimeError(f"{RCU_EXPEDITED} is not 0: someone else set it")
        try:
            if self.expedite == "all":
                with open(RCU_EXPEDITED, "w") as f:
                    f.write("1")
            self.all(["syncfs"])
            with open(RCU_EXPEDITED, "w") as f:
                f.write("1")
            self.all([FIFREEZE])
        finally:
            with open(RCU_EXPEDITED, "w") as f:
                f.write("0")

    def thaw(self):
        self.all([FITHAW])

    def settle(self):
        pass


def dirty(mounts, mib):
    """MIB MiB of unsynced data, spread evenly over the mounts."""
    if mib <= 0:
        return
    block = b"d" * (1 << 20)
    per = max(1, mib // len(mounts))
    for m in mounts:
        with open(os.path.join(m, "dirty.bin"), "wb") as f:
            for _ in range(per):
                f.write(block)


def run_once(name, freezer, mounts, a):
    writers = []
    for i, m in enumerate(mounts):
        p = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "appender.py"), os.path.join(m, "app.log"),
             "--interval-ms", str(a.interval_ms), "--sync-every", str(a.sync_every)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        writers.append(p)
    for p in writers:
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError("an appender did not start")
    time.sleep(0.3)
    dirty(mounts, a.dirty_mib)
    t0 = now()
    try:
        freezer.freeze()
        t1 = now()
        time.sleep(a.hold_ms / 1000)
        t2 = now()
    finally:
        freezer.thaw()
    t3 = now()
    freezer.settle()
    time.sleep(0.3)
    stalls = []
    for p in writers:
        out, _ = p.communicate("", timeout=60)
        stalls.append(json.loads(out.strip().splitlines()[-1]))
    for m in mounts:
        for f in ("dirty.bin", "app.log"):
            try:
                os.unlink(os.path.join(m, f))
            except FileNotFoundError:
                pass
    return {
        "freezer": name,
        "dirty_mib": a.dirty_mib,
        "hold_ms": a.hold_ms,
        "mounts": len(mounts),
        "to_frozen_ms": (t1 - t0) / 1e6,
        "to_thawed_ms": (t3 - t2) / 1e6,
        "window_ms": (t3 - t0) / 1e6,
        "longest_stall_ms": max(s["longest_ms"] for s in stalls),
        "stalls_ms": [s["longest_ms"] for s in stalls],
        "p99_ms": max(s["p99_ms"] for s in stalls),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mounts", nargs="+", required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dirty-mib", type=int, default=0)
    ap.add_argument("--hold-ms", type=int, default=0)
    ap.add_argument("--interval-ms", type=float, default=1.0)
    ap.add_argument("--sync-every", type=int, default=8)
    ap.add_argument("--gap", type=float, default=0.5)
    ap.add_argument("--quiesce-url")
    ap.add_argument("--quiesce-normal-rcu-url")
    ap.add_argument("--qga-socket")
    ap.add_argument("--freezers",
                    default="quiesce,quiesce_normal_rcu,fsfreeze,qga,floor,floor_expedited")
    a = ap.parse_args()
    for m in a.mounts:
        if os.path.realpath(m) in ("/", "/work", "/tmp"):
            raise SystemExit(f"refusing to freeze {m}")
    names = a.freezers.split(",")
    freezers = {}
    for n in names:
        if n == "quiesce":
            freezers[n] = Quiesce(a.quiesce_url, a.mounts)
        elif n == "quiesce_normal_rcu":
            freezers[n] = Quiesce(a.quiesce_normal_rcu_url, a.mounts)
        elif n == "fsfreeze":
            freezers[n] = Fsfreeze(a.mounts)
        elif n == "qga":
            freezers[n] = Qga(a.qga_socket, a.mounts)
        elif n == "floor":
            freezers[n] = Floor(a.mounts)
        elif n == "floor_expedited":
            freezers[n] = Floor(a.mounts, expedite=True)
        elif n == "floor_expedited_flush":
            freezers[n] = Floor(a.mounts, expedite="all")
        else:
            raise SystemExit(f"unknown freezer {n}")
    try:
        for r in range(a.runs):
            # Alternate the order so that no freezer always follows the same one.
            order = names[r % len(names):] + names[:r % len(names)]
            for n in order:
                for m in a.mounts:
                    fd = os.open(m, os.O_RDONLY | os.O_DIRECTORY)
                    LIBC.syncfs(fd)
                    os.close(fd)
                time.sleep(a.gap)
                result = run_once(n, freezers[n], a.mounts, a)
                result["run"] = r
                print(json.dumps(result), flush=True)
    finally:
        # Whatever happened: nothing of ours stays frozen.
        for m in a.mounts:
            subprocess.run(["fsfreeze", "-u", m], stderr=subprocess.DEVNULL)
        if any(n.startswith("floor_expedited") for n in names):
            with open(RCU_EXPEDITED, "w") as f:
                f.write("0")


if __name__ == "__main__":
    main()
