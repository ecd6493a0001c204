#!/usr/bin/env python3
"""The footprint and soak of scripts/bench-footprint.sh: what the agent costs a VM that runs it
all the time, and whether that cost stays flat.

  ready     start the daemon N times with a notify socket of our own: time from exec to READY=1
  idle      one daemon: RSS, PSS, threads and open fds after start; its CPU time over S seconds
            of idleness; the RSS of the freezer watchdog while frozen and of the hook helper
            while a hook runs (apibench.py's probes)
  soak      C snapshot cycles through the API (POST, wait frozen, thaw, wait done): every cycle
            must end `succeeded` with every mount frozen then thawed; every Nth cycle also copies
            the image while frozen and checks the copy (e2fsck -fn, needs_recovery clear, the
            marker file written before the freeze is in it); RSS and fds sampled every 100
            cycles.

Each prints JSON lines. The daemon runs from --quiesce with --config (auth none, loopback,
freeze restricted to the benchmark's loop mounts; the config names a hook that sleeps for the
helper probe when --hook is given).
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from apibench import Api, find_child, proc_status  # noqa: E402


def emit(obj):
    print(json.dumps(obj), flush=True)


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


class Daemon:
    def __init__(self, quiesce, config, log):
        self.dir = tempfile.mkdtemp(prefix="quiesce-footprint-")
        path = os.path.join(self.dir, "notify.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(path)
        env = dict(os.environ, NOTIFY_SOCKET=path, QUIESCE_LOG_TARGET="stderr")
        self.t0 = time.monotonic_ns()
        self.proc = subprocess.Popen([quiesce, "daemon", "--config", config],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(log, "ab"), env=env)
        self.notify.settimeout(20)
        while True:
            msg = self.notify.recv(4096).decode()
            if "READY=1" in msg.splitlines():
                self.ready_ms = (time.monotonic_ns() - self.t0) / 1e6
                self.status = [l for l in msg.splitlines() if l.startswith("STATUS=")]
                break

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.notify.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def cmd_ready(a):
    for _ in range(a.runs):
        d = Daemon(a.quiesce, a.config, a.log)
        emit({"kind": "ready", "ready_ms": d.ready_ms})
        d.stop()
        time.sleep(0.2)


def cycle(api, mounts, check=None):
    st, snap, _ = api.request("POST", "/v1/snapshots", {"mounts": mounts})
    if st != 202:
        raise RuntimeError(f"POST: {st} {snap}")
    sid = snap["id"]
    st, snap, _ = api.request("GET", f"/v1/snapshots/{sid}?wait=frozen&timeout_ms=30000")
    ok = snap.get("state") == "frozen" and all(m["frozen"] for m in snap["mounts"])
    checked = check() if (ok and check) else None
    st, snap, _ = api.request("POST", f"/v1/snapshots/{sid}/thaw", {"storage_snapshot": "taken"})
    thawed = st == 200 and not any(m["frozen"] for m in snap["mounts"])
    st, done, _ = api.request("GET", f"/v1/snapshots/{sid}?wait=done&timeout_ms=30000")
    good = ok and thawed and done.get("state") == "succeeded" and done.get("consistency") in (
        "application", "file_system")
    return good, checked, done


def image_check(image, mount, marker):
    """Copies the image (frozen right now) and checks the copy."""
    def check():
        with tempfile.TemporaryDirectory(prefix="quiesce-soak-") as tmp:
            copy = os.path.join(tmp, "copy.img")
            shutil.copyfile(image, copy)
            fsck = subprocess.run(["e2fsck", "-fn", copy], capture_output=True)
            head = subprocess.run(["dumpe2fs", "-h", copy], capture_output=True, text=True)
            recovery = "needs_recovery" in head.stdout
            cat = subprocess.run(["debugfs", "-R", f"cat /{os.path.basename(marker)}", copy],
                                 capture_output=True, text=True)
            want = open(marker).read()
            return fsck.returncode == 0 and not recovery and cat.stdout == want
    return check


def cmd_idle(a):
    d = Daemon(a.quiesce, a.config, a.log)
    pid = d.proc.pid
    time.sleep(1)
    st = proc_status(pid)
    emit({"kind": "idle", "ready_ms": d.ready_ms, "rss_kib": st["VmRSS_kib"],
          "anon_kib": st["RssAnon_kib"], "file_kib": st["RssFile_kib"],
          "pss_kib": st.get("Pss_kib"), "threads": st["threads"], "fds": fds(pid)})
    before = proc_status(pid)
    time.sleep(a.idle_seconds)
    after = proc_status(pid)
    ticks = (after["utime"] + after["stime"]) - (before["utime"] + before["stime"])
    emit({"kind": "idle_cpu", "seconds": a.idle_seconds, "cpu_ms": ticks * 1000 / after["clk_tck"]})
    api = Api(a.url)
    # The freezer watchdog's RSS while frozen.
    st_, snap, _ = api.request("POST", "/v1/snapshots", {"mounts": a.mounts})
    sid = snap["id"]
    if a.hook:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            cpid, _ = find_child(pid, "hook-exec")
            if cpid:
                time.sleep(0.2)
                emit({"kind": "hook_helper", "rss_kib": proc_status(cpid)["VmRSS_kib"]})
                break
            time.sleep(0.005)
    api.request("GET", f"/v1/snapshots/{sid}?wait=frozen&timeout_ms=30000")
    cpid, _ = find_child(pid, "watchdog")
    if cpid:
        emit({"kind": "watchdog", "rss_kib": proc_status(cpid)["VmRSS_kib"]})
    api.request("POST", f"/v1/snapshots/{sid}/thaw", {"storage_snapshot": "taken"})
    api.request("GET", f"/v1/snapshots/{sid}?wait=done&timeout_ms=30000")
    d.stop()


def cmd_soak(a):
    d = Daemon(a.quiesce, a.config, a.log)
    pid = d.proc.pid
    api = Api(a.url)
    marker = os.path.join(a.mounts[0], "marker.txt")
    bad, checked_ok, checked = 0, 0, 0
    t0 = time.monotonic()
    first = None
    for i in range(1, a.cycles + 1):
        check = None
        if a.check_every and i % a.check_every == 0:
            with open(marker, "w") as f:
                f.write(f"cycle {i} at {time.time_ns()}\n")
                f.flush()
                os.fsync(f.fileno())
            check = image_check(a.image, a.mounts[0], marker)
        good, result, done = cycle(api, a.mounts, check)
        if not good:
            bad += 1
            emit({"kind": "bad_cycle", "cycle": i, "snapshot": done})
        if result is not None:
            checked += 1
            checked_ok += bool(result)
        if i == 1 or i % 100 == 0:
            st = proc_status(pid)
            row = {"kind": "sample", "cycle": i, "rss_kib": st["VmRSS_kib"],
                   "anon_kib": st["RssAnon_kib"], "file_kib": st["RssFile_kib"],
                   "fds": fds(pid), "threads": st["threads"]}
            first = first or row
            emit(row)
    emit({"kind": "soak", "cycles": a.cycles, "bad": bad, "images_checked": checked,
          "images_consistent": checked_ok, "seconds": round(time.monotonic() - t0, 1)})
    d.stop()


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("ready", "idle", "soak"):
        p = sub.add_parser(name)
        p.add_argument("--quiesce", required=True)
        p.add_argument("--config", required=True)
        p.add_argument("--log", required=True)
        p.add_argument("--url")
        p.add_argument("--mounts", nargs="*", default=[])
        p.add_argument("--runs", type=int, default=20)
        p.add_argument("--idle-seconds", type=int, default=60)
        p.add_argument("--hook", action="store_true")
        p.add_argument("--cycles", type=int, default=1000)
        p.add_argument("--check-every", type=int, default=100)
        p.add_argument("--image")
    a = ap.parse_args()
    {"ready": cmd_ready, "idle": cmd_idle, "soak": cmd_soak}[a.cmd](a)


if __name__ == "__main__":
    main()
