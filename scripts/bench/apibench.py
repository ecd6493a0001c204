#!/usr/bin/env python3
"""The measuring client of scripts/bench-api.sh: drives the daemon's HTTP API like a small host
orchestrator would, times it from the client side, and reads the daemon's footprint in /proc.

Every request goes over a connection of its own (`Connection: close`, no keep-alive), made with
http.client; client-side times are time.monotonic_ns(). Where a request's latency is reported,
the TCP connection is opened first and the clock starts right before the request is written
(the connect is timed separately), so the figure is request written -> answer read.

Subcommands (each prints JSON lines on stdout):

  cycles   --url URL --runs N --gap S --mounts A B [--pid DAEMON_PID]
           N rounds; each round: S s idle, one API freeze+thaw cycle (POST /v1/snapshots {},
           GET ?wait=frozen, POST .../thaw {"storage_snapshot":"taken"} at once, GET ?wait=done),
           S s idle, the shell sequence `fsfreeze -f A; fsfreeze -f B; fsfreeze -u B;
           fsfreeze -u A` as a bash script, S s idle, raw FIFREEZE A, B then timed FITHAW B, A
           (ioctls from this process: the kernel's share of a thaw); with --curl, S s idle and
           one more API cycle whose thaw is sent by curl (its own timers: no Python in it).
  cli      --quiesce BIN --url URL --runs N --gap S
           N runs of the reference host client `quiesce snapshot --agent URL --exec true`.
  health   --url URL --runs N --gap S
           N times: S s idle, GET /v1/health twice (after idleness, and right after another
           request: the HTTP floor of this client and the daemon); the same for a plain TCP
           echo process (the machine's loopback floor, no HTTP).
  probe    --url URL --pid DAEMON_PID [--hook]
           One snapshot; while it is frozen (or, with --hook, while its pre hook runs), finds
           the daemon's child process `quiesce watchdog` (`quiesce hook-exec`) and reads its
           /proc status; then thaws and waits for the end.
  proc     --pid PID
           VmRSS, VmHWM, RssAnon, RssFile, threads, utime+stime and context switches of PID.

ONLY pass loop mounts created for the benchmark: never /, /work or /tmp.
"""
import argparse
import fcntl
import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse

import signing

FIFREEZE = 0xC0045877
FITHAW = 0xC0045878
CLK_TCK = os.sysconf("SC_CLK_TCK")


def now():
    return time.monotonic_ns()


def ms(ns):
    return ns / 1e6


class Api:
    def __init__(self, url):
        u = urllib.parse.urlsplit(url)
        self.host = u.hostname
        self.port = u.port

    def request(self, method, path, body=None, timeout=60):
        """One request on a fresh connection. Returns (status, json_or_text, timings) where
        timings = {connect_ms, latency_ms (request written -> answer read), t_start, t_end}."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        t0 = now()
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t1 = now()
        headers = {"Connection": "close"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        headers.update(signing.headers(method, path, data or b""))
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        t2 = now()
        conn.close()
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = raw.decode(errors="replace")
        return resp.status, payload, {"connect_ms": ms(t1 - t0), "latency_ms": ms(t2 - t1),
                                      "t_connect": t0, "t_start": t1, "t_end": t2}


def check_mounts(mounts):
    for m in mounts:
        if os.path.realpath(m) in ("/", "/work", "/tmp"):
            raise SystemExit(f"refusing to freeze {m}")


def emit(obj):
    print(json.dumps(obj), flush=True)


# ------------------------------------------------------------------------------ /proc

def proc_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            v = v.strip()
            if k in ("VmRSS", "VmHWM", "VmLck", "VmPin", "RssAnon", "RssFile", "RssShmem",
                     "VmSize", "VmData"):
                out[k + "_kib"] = int(v.split()[0])
            elif k == "Threads":
                out["threads"] = int(v)
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): utime and stime are fields 14 and 15.
    out["utime"] = int(fields[11])
    out["stime"] = int(fields[12])
    # Context switches per thread (tid -> [voluntary, involuntary]): a thread that exits takes
    # its counts with it, so deltas are only meaningful per thread.
    ctxt = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            c = [0, 0]
            with open(f"/proc/{pid}/task/{t}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches"):
                        c[0] = int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches"):
                        c[1] = int(line.split()[1])
            ctxt[t] = c
        except FileNotFoundError:
            pass
    out["ctxt"] = ctxt
    out["clk_tck"] = CLK_TCK
    names = []
    for t in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
        try:
            with open(f"/proc/{pid}/task/{t}/comm") as f:
                names.append(f.read().strip())
        except FileNotFoundError:
            pass
    out["thread_names"] = names
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("Pss", "Private_Clean", "Private_Dirty", "Shared_Clean", "Shared_Dirty"):
                    out[k + "_kib"] = int(v.split()[0])
    except FileNotFoundError:
        pass
    return out


def locked_maps(pid):
    """From /proc/PID/smaps: what VmLck is made of. Sums, in KiB, over the mappings flagged
    locked (VmFlags `lo`): their size, their resident part, and the size of those that are
    inaccessible (---p: reserved address space, e.g. glibc's per-thread malloc arenas)."""
    maps = []
    cur = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            first = line.split(None, 1)[0]
            if "-" in first and ":" not in first:
                parts = line.split()
                cur = {"perm": parts[1], "name": parts[5] if len(parts) > 5 else ""}
                maps.append(cur)
            elif first == "Size:":
                cur["size"] = int(line.split()[1])
            elif first == "Rss:":
                cur["rss"] = int(line.split()[1])
            elif first == "VmFlags:":
                cur["locked"] = "lo" in line.split()[1:]
    lk = [m for m in maps if m.get("locked")]
    return {
        "locked_size_kib": sum(m["size"] for m in lk),
        "locked_rss_kib": sum(m["rss"] for m in lk),
        "locked_noaccess_kib": sum(m["size"] for m in lk if m["perm"].startswith("---")),
        "locked_noaccess_maps": sum(1 for m in lk if m["perm"].startswith("---")),
        "locked_file_rss_kib": sum(m["rss"] for m in lk if m["name"].startswith("/")),
    }


def children(pid):
    """Direct children of pid, as (pid, argv)."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != pid:
                continue
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
            found.append((int(d), argv))
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            pass
    return found


def find_child(pid, sub):
    for cpid, argv in children(pid):
        if len(argv) >= 2 and argv[1] == sub:
            return cpid, argv
    return None, None


# ------------------------------------------------------------------------------ cycles

def api_cycle(api):
    r = {}
    st, snap, t = api.request("POST", "/v1/snapshots", {})
    r["post_status"] = st
    r["post_ms"] = t["latency_ms"]
    t_post = t["t_connect"]
    if st != 202:
        r["error"] = f"POST /v1/snapshots: {st} {snap}"
        return r
    sid = snap["id"]
    st, snap, t = api.request("GET", f"/v1/snapshots/{sid}?wait=frozen&timeout_ms=30000")
    t_frozen = t["t_end"]
    r["frozen_state"] = snap.get("state") if isinstance(snap, dict) else None
    # At once: the thaw. Connect first; the latency is request written -> 200 read.
    st, snap, t = api.request("POST", f"/v1/snapshots/{sid}/thaw", {"storage_snapshot": "taken"})
    r["thaw_status"] = st
    r["thaw_ms"] = t["latency_ms"]
    r["thaw_connect_ms"] = t["connect_ms"]
    r["post_to_thawed_ms"] = ms(t["t_end"] - t_post)
    r["frozen_to_thawed_ms"] = ms(t["t_end"] - t_frozen)
    r["post_to_frozen_ms"] = ms(t_frozen - t_post)
    if st != 200:
        r["error"] = f"thaw: {st} {snap}"
    st, snap, t = api.request("GET", f"/v1/snapshots/{sid}?wait=done&timeout_ms=30000")
    r["done_after_thaw_ms"] = ms(t["t_end"] - t_post) - r["post_to_thawed_ms"]
    r["snapshot"] = snap
    return r


FSFREEZE_SCRIPT = r'''
t0=$EPOCHREALTIME
fsfreeze -f "$1"
fsfreeze -f "$2"
fsfreeze -u "$2"
fsfreeze -u "$1"
t1=$EPOCHREALTIME
echo "${t0/./} ${t1/./}"
'''


RCU_EXPEDITED = "/sys/kernel/rcu_expedited"


def fsfreeze_script_expedited(a, b):
    """The fsfreeze script with /sys/kernel/rcu_expedited at 1 around it, as quiesce has it
    around its FIFREEZE calls: the fair comparison of a whole cycle. Only from 0, always back
    to 0."""
    with open(RCU_EXPEDITED) as f:
        if f.read().strip() != "0":
            return {"error": f"{RCU_EXPEDITED} is not 0: someone else set it"}
    try:
        with open(RCU_EXPEDITED, "w") as f:
            f.write("1")
        return fsfreeze_script(a, b)
    finally:
        with open(RCU_EXPEDITED, "w") as f:
            f.write("0")


def fsfreeze_script(a, b):
    t0 = now()
    p = subprocess.run(["bash", "-c", FSFREEZE_SCRIPT, "fsfreeze-seq", a, b],
                       stdout=subprocess.PIPE, check=True, text=True)
    t1 = now()
    s, e = (int(x) for x in p.stdout.split())
    return {"whole_ms": ms(t1 - t0), "window_ms": (e - s) / 1000}


def raw_thaw(fds):
    """FIFREEZE A, B (untimed), 3 ms frozen, then FITHAW B, A, each timed."""
    frozen = []
    try:
        for fd in fds:
            fcntl.ioctl(fd, FIFREEZE, 0)
            frozen.append(fd)
        time.sleep(0.003)
        times = []
        t_all = now()
        while frozen:
            fd = frozen.pop()
            t0 = now()
            fcntl.ioctl(fd, FITHAW, 0)
            times.append(ms(now() - t0))
        return {"fithaw_ms": list(reversed(times)), "both_ms": ms(now() - t_all)}
    finally:
        for fd in reversed(frozen):
            try:
                fcntl.ioctl(fd, FITHAW, 0)
            except OSError:
                pass


def api_cycle_curl(api, url):
    """Like api_cycle, but the thaw is sent by curl: its own timers (time_pretransfer: connected
    and about to send; time_total: answer read) give the thaw's latency without Python's."""
    r = {}
    st, snap, _ = api.request("POST", "/v1/snapshots", {})
    if st != 202:
        r["error"] = f"POST /v1/snapshots: {st} {snap}"
        return r
    sid = snap["id"]
    api.request("GET", f"/v1/snapshots/{sid}?wait=frozen&timeout_ms=30000")
    thaw_body = '{"storage_snapshot":"taken"}'
    signed = []
    for k, v in signing.headers("POST", f"/v1/snapshots/{sid}/thaw", thaw_body.encode()).items():
        signed += ["-H", f"{k}: {v}"]
    p = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-X", "POST", "-H", "Content-Type: application/json",
         "-H", "Connection: close", *signed, "--data-binary", thaw_body,
         "-w", "%{http_code} %{time_connect} %{time_pretransfer} %{time_starttransfer} %{time_total}",
         f"{url}/v1/snapshots/{sid}/thaw"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        code, tc, tp, ts, tt = p.stdout.split()
        r["thaw_status"] = int(code)
        r["curl_thaw_ms"] = (float(tt) - float(tp)) * 1000
        r["curl_ttfb_ms"] = (float(ts) - float(tp)) * 1000
        r["curl_connect_ms"] = float(tc) * 1000
    except ValueError:
        r["error"] = f"curl: {p.stdout!r} {p.stderr!r}"
    st, snap, _ = api.request("GET", f"/v1/snapshots/{sid}?wait=done&timeout_ms=30000")
    r["snapshot"] = snap
    return r


def cmd_cycles(a):
    check_mounts(a.mounts)
    api = Api(a.url)
    fds = [os.open(m, os.O_RDONLY | os.O_DIRECTORY) for m in a.mounts]
    try:
        for i in range(a.runs):
            time.sleep(a.gap)
            r = api_cycle(api)
            r["kind"] = "api"
            r["run"] = i
            if a.pid:
                r["daemon"] = proc_status(a.pid)
            emit(r)
            time.sleep(a.gap)
            r = fsfreeze_script(*a.mounts)
            r["kind"] = "fsfreeze"
            r["run"] = i
            emit(r)
            time.sleep(a.gap)
            r = fsfreeze_script_expedited(*a.mounts)
            r["kind"] = "fsfreeze_expedited"
            r["run"] = i
            emit(r)
            time.sleep(a.gap)
            r = raw_thaw(fds)
            r["kind"] = "raw"
            r["run"] = i
            emit(r)
            if a.curl:
                time.sleep(a.gap)
                r = api_cycle_curl(api, a.url)
                r["kind"] = "api_curl"
                r["run"] = i
                if a.pid:
                    r["daemon"] = proc_status(a.pid)
                emit(r)
    finally:
        for fd in fds:
            os.close(fd)


def cmd_cli(a):
    for i in range(a.runs):
        time.sleep(a.gap)
        t0 = now()
        key = ["--key-file", os.environ["QUIESCE_KEY_FILE"]] if signing.KEY else []
        p = subprocess.run([a.quiesce, "snapshot", "--agent", a.url, *key, "--exec", "true"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t1 = now()
        try:
            rep = json.loads(p.stdout)
        except ValueError:
            rep = None
        emit({"kind": "cli", "run": i, "rc": p.returncode, "wall_ms": ms(t1 - t0),
              "report": rep, "stderr": p.stderr[-2000:]})


def echo_server():
    """A forked Python process that echoes one message per connection: the loopback round trip
    of this machine without HTTP or quiesce. Returns (port, pid)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    port = srv.getsockname()[1]
    pid = os.fork()
    if pid == 0:
        try:
            while True:
                c, _ = srv.accept()
                c.sendall(c.recv(64))
                c.close()
        finally:
            os._exit(0)
    srv.close()
    return port, pid


def echo_rtt(port):
    c = socket.create_connection(("127.0.0.1", port))
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    t0 = now()
    c.sendall(b"x")
    c.recv(64)
    t1 = now()
    c.close()
    return ms(t1 - t0)


def cmd_health(a):
    """Per run: GAP idle, then two GET /v1/health back to back: the first after idleness
    ("cold"), the second right after another request ("warm", like the thaw, which follows the
    wait=frozen answer at once). The same for a plain TCP echo process."""
    api = Api(a.url)
    port, pid = echo_server()
    try:
        for i in range(a.runs):
            time.sleep(a.gap)
            _, _, cold = api.request("GET", "/v1/health")
            st, _, warm = api.request("GET", "/v1/health")
            time.sleep(a.gap)
            e_cold = echo_rtt(port)
            e_warm = echo_rtt(port)
            emit({"kind": "health", "run": i, "status": st, "cold_ms": cold["latency_ms"],
                  "latency_ms": warm["latency_ms"], "connect_ms": warm["connect_ms"],
                  "echo_cold_ms": e_cold, "echo_warm_ms": e_warm})
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def cmd_probe(a):
    api = Api(a.url)
    st, snap, _ = api.request("POST", "/v1/snapshots", {})
    if st != 202:
        emit({"kind": "probe", "error": f"POST: {st} {snap}"})
        return
    sid = snap["id"]
    out = {"kind": "hookprobe" if a.hook else "probe"}
    want = "hook-exec" if a.hook else "watchdog"
    if a.hook:
        # The pre hook sleeps: poll for the helper while it runs.
        deadline = time.monotonic() + 10
        cpid = None
        while time.monotonic() < deadline:
            cpid, argv = find_child(a.pid, want)
            if cpid:
                time.sleep(0.2)  # let it settle (the hook's sh is started by now)
                break
            time.sleep(0.005)
    else:
        st, snap, _ = api.request("GET", f"/v1/snapshots/{sid}?wait=frozen&timeout_ms=30000")
        out["state_at_probe"] = snap.get("state")
        cpid, argv = find_child(a.pid, want)
    if cpid:
        try:
            out["child"] = proc_status(cpid)
            out["child"].update(locked_maps(cpid))
            out["child"]["argv"] = argv
            out["child"]["pid"] = cpid
        except FileNotFoundError:
            out["error"] = f"{want} ended before it could be read"
    else:
        out["error"] = f"no child `quiesce {want}` of {a.pid} found"
    out["daemon"] = proc_status(a.pid)
    if a.hook:
        st, snap, _ = api.request("GET", f"/v1/snapshots/{sid}?wait=frozen&timeout_ms=30000")
    st, snap, _ = api.request("POST", f"/v1/snapshots/{sid}/thaw", {"storage_snapshot": "taken"})
    out["thaw_status"] = st
    st, snap, _ = api.request("GET", f"/v1/snapshots/{sid}?wait=done&timeout_ms=30000")
    out["snapshot"] = snap
    emit(out)


def cmd_proc(a):
    out = proc_status(a.pid)
    # The daemon's spare watchdog (started ahead of the next freeze), when it has one.
    cpid, argv = find_child(a.pid, "watchdog")
    if cpid:
        try:
            out["spare"] = proc_status(cpid)
            out["spare"]["pid"] = cpid
        except FileNotFoundError:
            pass
    emit(out)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("cycles")
    p.add_argument("--url", required=True)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--gap", type=float, default=0.2)
    p.add_argument("--pid", type=int)
    p.add_argument("--mounts", nargs=2, required=True)
    p.add_argument("--curl", action="store_true", help="add a cycle whose thaw curl sends")
    p = sub.add_parser("cli")
    p.add_argument("--quiesce", required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--gap", type=float, default=0.2)
    p = sub.add_parser("health")
    p.add_argument("--url", required=True)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--gap", type=float, default=0.2)
    p = sub.add_parser("probe")
    p.add_argument("--url", required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--hook", action="store_true")
    p = sub.add_parser("proc")
    p.add_argument("--pid", type=int, required=True)
    a = ap.parse_args()
    {"cycles": cmd_cycles, "cli": cmd_cli, "health": cmd_health, "probe": cmd_probe,
     "proc": cmd_proc}[a.cmd](a)


if __name__ == "__main__":
    main()
