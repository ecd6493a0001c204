#!/usr/bin/env python3
"""Turns the raw results of scripts/bench-api.sh into a table on stdout and, with --markdown
FILE, the same as a markdown section. Uses report.py's tables and statistics.

Usage: report_api.py RESULTS_DIR [--markdown FILE]

Statistics: median (statistics.median) and p90 by nearest rank (the ceil(0.9 n)-th smallest).
"""
import argparse
import collections
import json
import os
import re
import statistics
import sys

sys.dont_write_bytecode = True  # no __pycache__ left in scripts/bench by the import below
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import Out, Table, load_facts, load_jsonl, p90, stat_row  # noqa: E402

MIB = 1024  # KiB per MiB


def load_json(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        txt = f.read().strip()
    return json.loads(txt.splitlines()[-1]) if txt else None


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def mib(kib):
    return None if kib is None else kib / MIB


def yes(ok):
    return "yes" if ok else "NO"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--markdown")
    a = ap.parse_args()
    r = a.results

    facts = load_facts(r)
    fd = dict(facts)
    fs_b = fd.get("mount B", "?").split(",")[0]
    settings = dict(kv.split("=", 1) for kv in fd.get("settings", "").split() if "=" in kv)
    gap = settings.get("gap", "?").rstrip("s") + " s"
    idle = settings.get("idle", "?")

    cyc = load_jsonl(os.path.join(r, "cycles.jsonl"))
    api = [x for x in cyc if x["kind"] == "api"]
    apic = [x for x in cyc if x["kind"] == "api_curl"]
    ff = [x for x in cyc if x["kind"] == "fsfreeze"]
    raw = [x for x in cyc if x["kind"] == "raw"]
    cli = load_jsonl(os.path.join(r, "cli.jsonl"))
    health = load_jsonl(os.path.join(r, "health.jsonl"))
    probes = load_jsonl(os.path.join(r, "probes.jsonl"))
    hookp = load_jsonl(os.path.join(r, "hookprobe.jsonl"))
    snaps = [x["snapshot"] for x in api if isinstance(x.get("snapshot"), dict)]
    snaps_curl = [x["snapshot"] for x in apic if isinstance(x.get("snapshot"), dict)]
    cli_snaps = [s for x in cli if x.get("report") for s in x["report"].get("snapshots", [])]

    o = Out()
    o.h(f"quiesce daemon benchmark: {fd.get('date', '?')}, kernel {fd.get('kernel', '?').split()[0]}")
    o.items(facts)

    # ------------------------------------------------------------------ 1. cycle
    o.h(f"1. Freeze+thaw of two idle mounts (A ext4, B {fs_b}) through the API, against fsfreeze")
    o.p(f"All times in ms. Each round: {gap} idle, one API cycle; {gap} idle, the fsfreeze "
        f"script; {gap} idle, raw FIFREEZE/FITHAW ioctls (part 2); {gap} idle, one more API "
        "cycle whose thaw curl sends (part 2). Client times are taken by a Python http.client "
        "client, one connection per request. `frozen_ms` is the agent's (whole milliseconds, "
        "truncated).")
    t = Table(["measurement", "median", "p90", "min", "max", "n"])
    stat_row(t, "(a) API: agent's frozen_ms (first FIFREEZE .. last FITHAW)",
             [s.get("frozen_ms") for s in snaps])
    stat_row(t, "(b) API client: POST /v1/snapshots .. thaw's 200",
             [x.get("post_to_thawed_ms") for x in api])
    stat_row(t, "    API client: frozen answer (wait=frozen) .. thaw's 200",
             [x.get("frozen_to_thawed_ms") for x in api])
    stat_row(t, "    API client: POST /v1/snapshots .. frozen answer",
             [x.get("post_to_frozen_ms") for x in api])
    stat_row(t, "    API client: POST /v1/snapshots answered (202)", [x.get("post_ms") for x in api])
    stat_row(t, "    API client: thaw's 200 .. wait=done answer", [x.get("done_after_thaw_ms") for x in api])
    stat_row(t, "(c) fsfreeze script: window, first -f .. last -u (bash)", [x["window_ms"] for x in ff])
    stat_row(t, "    fsfreeze script: whole `bash -c` (shell start-up included)", [x["whole_ms"] for x in ff])
    ffx = [x for x in cyc if x["kind"] == "fsfreeze_expedited" and "window_ms" in x]
    if ffx:
        stat_row(t, "(c') fsfreeze script, rcu_expedited=1 around it: window", [x["window_ms"] for x in ffx])
        stat_row(t, "    the same, whole `bash -c`", [x["whole_ms"] for x in ffx])
    stat_row(t, "(d) quiesce snapshot --exec true: agent's frozen_ms", [s.get("frozen_ms") for s in cli_snaps])
    stat_row(t, "    quiesce snapshot --exec true: command wall time", [x["wall_ms"] for x in cli])
    o.t(t)
    q_frozen = med([s.get("frozen_ms") for s in snaps])
    f_window = med([x["window_ms"] for x in ff])
    q_whole = med([x.get("post_to_thawed_ms") for x in api])
    f_whole = med([x["whole_ms"] for x in ff])
    if q_frozen is not None and f_window:
        o.p(f"Frozen window (medians): API {q_frozen:.1f} ms against fsfreeze {f_window:.1f} ms "
            f"({q_frozen / f_window:.2f}x). Client-side whole cycle: API {q_whole:.1f} ms against "
            f"the fsfreeze script {f_whole:.1f} ms ({q_whole / f_whole:.2f}x).")

    # ------------------------------------------------------------------ 2. thaw latency
    o.h("2. Thaw latency: POST .../thaw written .. 200 read")
    o.p("The TCP connection is opened before the clock starts (its time is the second row). "
        "Raw FITHAW: the two ioctls from a Python process, 3 ms after a FIFREEZE of both "
        "(B then A, as the watchdog thaws). GET /v1/health, timed the same way, is the HTTP "
        "floor of this client and the daemon: warm (right after another request, as the thaw "
        "comes right after the wait=frozen answer) and after idleness (as the POST that starts "
        "a snapshot). The TCP echo rows are the same round trips to a trivial Python process: "
        "what the machine itself costs.")
    t = Table(["measurement", "median", "p90", "min", "max", "n"])
    thaw = [x.get("thaw_ms") for x in api]
    stat_row(t, "POST .../thaw: request written .. 200 read", thaw)
    stat_row(t, "    its TCP connect (before the clock)", [x.get("thaw_connect_ms") for x in api])
    stat_row(t, "    connect + request .. 200 (a fresh connection per request)",
             [x["thaw_ms"] + x["thaw_connect_ms"] for x in api if x.get("thaw_ms") is not None])
    if apic:
        stat_row(t, "POST .../thaw sent by curl: request sent .. answer read",
                 [x.get("curl_thaw_ms") for x in apic])
        stat_row(t, "    curl: request sent .. first byte of the answer",
                 [x.get("curl_ttfb_ms") for x in apic])
    stat_row(t, "raw FITHAW B then A (both)", [x["both_ms"] for x in raw])
    stat_row(t, "    raw FITHAW A (ext4)", [x["fithaw_ms"][0] for x in raw])
    stat_row(t, f"    raw FITHAW B ({fs_b})", [x["fithaw_ms"][1] for x in raw])
    stat_row(t, "GET /v1/health right after another request (HTTP floor)", [x["latency_ms"] for x in health])
    stat_row(t, f"GET /v1/health after {gap} idle", [x.get("cold_ms") for x in health])
    stat_row(t, "TCP echo (Python process, no HTTP) right after another", [x.get("echo_warm_ms") for x in health])
    stat_row(t, f"TCP echo (Python process, no HTTP) after {gap} idle", [x.get("echo_cold_ms") for x in health])
    o.t(t)
    thaw_med = med(thaw)
    raw_med = med([x["both_ms"] for x in raw])
    h_med = med([x["latency_ms"] for x in health])
    if thaw_med is not None and raw_med is not None and h_med is not None:
        rest = thaw_med - raw_med - h_med
        o.p(f"Medians: thaw {thaw_med:.2f} ms; its parts, measured apart: the two FITHAW calls "
            f"{raw_med:.2f} ms, the HTTP floor {h_med:.2f} ms, which leaves "
            + (f"{rest:.2f} ms" if rest >= 0.1 else "nothing beyond the noise")
            + " for the way from the agent to the watchdog and back (the agent's tasks, the "
            "command and event pipes, the watchdog's threads, one new thread per FITHAW, the "
            "state_dir records, the JSON of the answer).")

    # ------------------------------------------------------------------ 3-5. footprint
    o.h("3-5. Footprint: memory, binary, threads, idle CPU")
    p_start = load_json(os.path.join(r, "proc_start.json"))
    p_cyc = load_json(os.path.join(r, "proc_after_cycles.json"))
    p_all = load_json(os.path.join(r, "proc_after_all.json"))
    n_cyc = len(snaps) + len(snaps_curl)
    n_all = n_cyc + len(cli_snaps) + len(probes)
    # The daemon as it was right after its 20th snapshot (readings follow every API cycle).
    p_20 = None
    count = 0
    for x in cyc:
        if x["kind"] in ("api", "api_curl") and isinstance(x.get("snapshot"), dict):
            count += 1
            if count == 20 and x.get("daemon"):
                p_20 = x["daemon"]
    t = Table(["process", "VmRSS MiB", "VmHWM MiB", "RssAnon MiB", "RssFile MiB", "Pss MiB",
               "Private MiB", "VmLck MiB", "threads"])

    def prow(label, p):
        if not p:
            t.add(label, None, None, None, None, None, None, None, None)
            return
        priv = None
        if "Private_Clean_kib" in p:
            priv = mib(p["Private_Clean_kib"] + p.get("Private_Dirty_kib", 0))
        t.add(label, mib(p.get("VmRSS_kib")), mib(p.get("VmHWM_kib")), mib(p.get("RssAnon_kib")),
              mib(p.get("RssFile_kib")), mib(p.get("Pss_kib")), priv, mib(p.get("VmLck_kib")),
              str(p.get("threads")))

    def every_process(p):
        """The daemon and its spare watchdog together: the idle footprint of every process of
        quiesce (Pss and Private add up; the others would count shared pages twice)."""
        if not p or not p.get("spare"):
            return None
        s = p["spare"]
        return {k: p.get(k, 0) + s.get(k, 0) for k in
                ("Pss_kib", "Private_Clean_kib", "Private_Dirty_kib", "RssAnon_kib", "VmLck_kib")} | {
                "threads": p.get("threads", 0) + s.get("threads", 0)}

    prow("daemon, 1 s after start", p_start)
    prow("spare watchdog, 1 s after start", (p_start or {}).get("spare"))
    prow("every quiesce process, 1 s after start (daemon + spare; Pss, Private summed)", every_process(p_start))
    if p_20 and n_cyc != 20:
        prow("daemon, after 20 snapshots", p_20)
    prow(f"daemon, after {n_cyc} snapshots (API cycles)", p_cyc)
    prow(f"daemon, after {n_all} snapshots", p_all)
    p_idle = load_json(os.path.join(r, "idle3_after.json"))
    if p_idle:
        prow(f"daemon, after {n_all} snapshots and the idle windows", p_idle)
        prow(f"spare watchdog, after {n_all} snapshots and the idle windows", p_idle.get("spare"))
        prow(f"every quiesce process, after {n_all} snapshots and the idle windows (summed)", every_process(p_idle))
    wd = [x["child"] for x in probes if x.get("child")]
    for i, w in enumerate(wd):
        prow(f"watchdog while frozen (probe {i + 1})", w)
    hk = [x["child"] for x in hookp if x.get("child")]
    for w in hk:
        prow("hook helper (quiesce hook-exec) while its hook runs", w)
    o.t(t)
    o.p("VmRSS counts every resident page mapped, the binary's and libc's file pages included "
        "(RssFile: shared with the page cache and with other quiesce processes); Pss shares "
        "those out among the processes mapping them; Private is what only this process holds.")
    if wd:
        w = max(wd, key=lambda x: x.get("VmLck_kib", 0))
        if "locked_size_kib" in w:
            o.p(f"Watchdog's locked mappings (smaps, the probe with the largest VmLck): "
                f"{w['locked_size_kib'] / MIB:.1f} MiB locked address space, of which "
                f"{w['locked_noaccess_kib'] / MIB:.1f} MiB in {w['locked_noaccess_maps']} "
                f"inaccessible (---p) reservations that hold no memory; resident and locked: "
                f"{w['locked_rss_kib'] / MIB:.2f} MiB, of which {w['locked_file_rss_kib'] / MIB:.2f} MiB "
                f"file pages (binary, libc, libm, ld.so). Threads: {', '.join(w.get('thread_names', []))}.")
    if p_start:
        o.p("Daemon threads: after start " + ", ".join(p_start.get("thread_names", []))
            + (f"; after the runs " + ", ".join(p_all.get("thread_names", [])) if p_all else "") + ".")
    rows = [x for x in cyc if x["kind"] in ("api", "api_curl") and x.get("daemon")]
    series = [x["daemon"]["VmRSS_kib"] for x in rows]
    if series:
        o.p(f"Daemon VmRSS after each of the {len(series)} API cycles (MiB): first "
            f"{series[0] / MIB:.2f}, after 5 {series[min(4, len(series) - 1)] / MIB:.2f}, last "
            f"{series[-1] / MIB:.2f}, max {max(series) / MIB:.2f}; RssAnon first "
            f"{rows[0]['daemon']['RssAnon_kib'] / MIB:.2f}, last {rows[-1]['daemon']['RssAnon_kib'] / MIB:.2f}; "
            "threads after each cycle (threads: cycles): "
            + ", ".join(f"{k}: {v}" for k, v in sorted(collections.Counter(
                x['daemon']['threads'] for x in rows).items())) + ".")

    t = Table(["idle window", "seconds", "utime+stime (ticks)", "ctxt switches (threads alive throughout)",
               "threads before", "threads after", "perf task-clock ms", "perf context-switches"])
    idles = []

    def perf_csv(path):
        out = {}
        if not os.path.exists(path):
            return None
        for line in open(path):
            f = line.strip().split(",")
            if len(f) < 3 or line.startswith("#"):
                continue
            v = 0.0 if f[0].startswith("<not") else float(f[0])
            out[f[2]] = v
        return out

    isec = idle.rstrip("s")
    windows = (("idle1", f"0-{isec} s after start"),
               ("idle2", f"0-{isec} s after the last request"),
               ("idle3", f"{isec}-{2 * int(isec) if isec.isdigit() else '?'} s after the last request"))
    for name, label in windows:
        b = load_json(os.path.join(r, f"{name}_before.json"))
        e = load_json(os.path.join(r, f"{name}_after.json"))
        if not b or not e:
            continue
        ticks = (e["utime"] + e["stime"]) - (b["utime"] + b["stime"])
        # The spare watchdog's CPU, when the same spare was there at both ends.
        sb, se = b.get("spare"), e.get("spare")
        if sb and se and sb.get("pid") == se.get("pid"):
            ticks += (se["utime"] + se["stime"]) - (sb["utime"] + sb["stime"])
        both = set(b["ctxt"]) & set(e["ctxt"])
        sw = sum(sum(e["ctxt"][tid]) - sum(b["ctxt"][tid]) for tid in both)
        gone = len(set(b["ctxt"]) - set(e["ctxt"]))
        born = len(set(e["ctxt"]) - set(b["ctxt"]))
        pf = perf_csv(os.path.join(r, f"{name}_perf.csv"))
        pclock = pf.get("task-clock") if pf else None
        pcs = pf.get("context-switches") if pf else None
        idles.append((label, ticks, sw, gone, born, pclock, pcs))
        t.add(label, isec, str(ticks), str(sw), str(b["threads"]),
              f"{e['threads']}" + (f" ({gone} exited)" if gone else "") + (f" ({born} new)" if born else ""),
              pclock, None if pcs is None else str(int(pcs)))
    o.t(t)
    o.p("utime+stime: /proc/PID/stat, all threads, exited ones included; clock tick "
        f"1/{(p_start or {}).get('clk_tck', '?')} s (tick-sampled: a short burst is charged a whole "
        "tick or nothing). Context switches from /proc/PID/task/*/status, over the threads alive "
        "at both ends (an exiting thread takes its counts with it); every wakeup of a thread that "
        "then sleeps again is one switch. perf stat -p (when available) counts all threads, the one "
        "that exits included, and measures on-CPU time exactly (`<not counted>` = never ran = 0).")

    # ------------------------------------------------------------------ targets
    o.h("Targets")
    t = Table(["target", "measured", "met"], align=["l", "l", "l"])
    if q_frozen is not None and f_window:
        t.add("API freeze window no longer than fsfreeze's (medians)",
              f"frozen_ms {q_frozen:.1f} ms vs fsfreeze window {f_window:.1f} ms",
              yes(q_frozen <= f_window))
        t.add("API whole cycle no slower than the fsfreeze script (medians, client side)",
              f"{q_whole:.1f} ms vs {f_whole:.1f} ms", yes(q_whole <= f_whole))
        ffx_whole = [x["whole_ms"] for x in cyc if x["kind"] == "fsfreeze_expedited" and "whole_ms" in x]
        if ffx_whole:
            fx = med(ffx_whole)
            t.add("API whole cycle <= 1.0x the fsfreeze script with rcu_expedited=1 (medians, client side)",
                  f"{q_whole:.1f} ms vs {fx:.1f} ms ({q_whole / fx:.2f}x)", yes(q_whole <= fx))
    if thaw:
        tt = [x for x in thaw if x is not None]
        t.add("thaw answered within 2 ms of the request",
              f"median {med(tt):.2f} ms, p90 {p90(tt):.2f} ms, max {max(tt):.2f} ms",
              yes(med(tt) <= 2) + ("" if max(tt) <= 2 else " (median only)" if med(tt) <= 2 else ""))
    rss = [("daemon idle RSS after start", p_start)] + (
        [("daemon RSS after 20 snapshots", p_20)] if p_20 and n_cyc != 20 else []) + [
           (f"daemon idle RSS after {n_cyc} snapshots", p_cyc),
           (f"daemon idle RSS after {n_all} snapshots", p_all)]
    for label, p in rss:
        if p:
            t.add(f"{label} <= 6 MiB", f"{p['VmRSS_kib'] / MIB:.2f} MiB", yes(p["VmRSS_kib"] <= 6 * MIB))
    for label, p in (("after start", every_process(p_start)), ("after the runs and the idle windows", every_process(p_idle))):
        if p:
            priv = p["Private_Clean_kib"] + p["Private_Dirty_kib"]
            t.add(f"idle footprint of every quiesce process {label}: private <= 2 MiB, PSS <= 8 MiB",
                  f"private {priv / MIB:.2f} MiB, PSS {p['Pss_kib'] / MIB:.2f} MiB",
                  yes(priv <= 2 * MIB and p["Pss_kib"] <= 8 * MIB))
    if wd:
        w_rss = max(w["VmRSS_kib"] for w in wd)
        w_lck = max(w.get("VmLck_kib", 0) for w in wd)
        t.add("watchdog RSS while frozen <= 6 MiB (max of probes)",
              f"VmRSS {w_rss / MIB:.2f} MiB, VmLck {w_lck / MIB:.2f} MiB", yes(w_rss <= 6 * MIB))
    if hk:
        h_rss = max(w["VmRSS_kib"] for w in hk)
        t.add("hook helper RSS <= 6 MiB (optional)", f"{h_rss / MIB:.2f} MiB", yes(h_rss <= 6 * MIB))
    size = int(fd.get("binary size", "0") or 0)
    if size:
        t.add("release binary <= 8 MB", f"{size} bytes ({size / 1e6:.2f} MB, {size / 2**20:.2f} MiB)",
              yes(size <= 8_000_000))
    if p_start:
        t.add("threads of the idle daemon", f"{(p_idle or {}).get('threads', '?')} once idle "
              f"({p_start['threads']} 1 s after start, {(p_all or {}).get('threads', '?')} right "
              "after the runs)", "-")
    for label, ticks, sw, gone, born, pclock, pcs in idles:
        extra = f"; perf: {pclock:.2f} ms on CPU, {int(pcs)} context switches" if pclock is not None else ""
        extra += f"; {gone} thread(s) exited" if gone else ""
        t.add(f"no CPU while idle ({label})", f"{ticks} ticks{extra}",
              yes(ticks == 0 and not pclock))
    o.t(t)

    # ------------------------------------------------------------------ health
    o.h("Daemon run health")
    allsnaps = snaps + snaps_curl + cli_snaps + [x["snapshot"] for x in probes + hookp if isinstance(x.get("snapshot"), dict)]
    states = collections.Counter(s.get("state") for s in allsnaps)
    cons = collections.Counter(s.get("consistency") for s in allsnaps)
    reasons = collections.Counter(s.get("thaw_reason") for s in allsnaps)
    items = [("snapshots", f"{len(allsnaps)}: states {dict(states)}; consistency {dict(cons)}; "
                           f"thaw_reason {dict(reasons)}")]
    errs = [x["error"] for x in api + apic + probes + hookp if x.get("error")]
    items.append(("client errors", f"{len(errs)}" + (f": {errs[:3]}" if errs else "")))
    st = collections.Counter((x.get("post_status"), x.get("thaw_status"), x.get("frozen_state")) for x in api)
    items.append(("API cycle answers", "; ".join(f"POST {p} / wait=frozen state {s} / thaw {th}: {n}x"
                                                 for (p, th, s), n in st.items())))
    items.append(("quiesce snapshot exit codes", str(dict(collections.Counter(x["rc"] for x in cli)))))
    w = collections.Counter(f"{p.get('reason')}: {p.get('message')}" for s in allsnaps
                            for p in s.get("warnings") or [])
    for k, n in w.most_common(5):
        items.append(("snapshot warning", f"{n}x {k}"))
    e = collections.Counter(f"{p.get('reason')}: {p.get('message')}" for s in allsnaps
                            for p in s.get("errors") or [])
    for k, n in e.most_common(5):
        items.append(("snapshot error", f"{n}x {k}"))
    for name in ("daemon.stderr", "daemon-hook.stderr"):
        path = os.path.join(r, name)
        if not os.path.exists(path):
            continue
        lines = [ln.strip() for ln in open(path) if ln.strip()]
        norm = collections.Counter(
            re.sub(r"[0-9a-f]{16}", "ID", re.sub(r"^\S+\s+", "", ln)) for ln in lines)
        items.append((name, f"{len(lines)} lines"))
        for ln, n in norm.most_common(8):
            items.append((f"{name} line", f"{n}x {ln[:200]}"))
    spath = os.path.join(r, "stop_ms.txt")
    if os.path.exists(spath):
        items.append(("SIGTERM to exit", ", ".join(f"{ln.strip()} ms" for ln in open(spath) if ln.strip())
                      + " (idle daemon, then the hook daemon; polled every 10 ms)"))
    mpath = os.path.join(r, "metrics.txt")
    if os.path.exists(mpath):
        keep = [ln for ln in open(mpath).read().splitlines()
                if ln.startswith(("quiesce_snapshots_total", "quiesce_thaws_total",
                                  "quiesce_snapshot_frozen_seconds_sum",
                                  "quiesce_snapshot_frozen_seconds_count"))
                and not ln.rstrip().endswith(" 0")]
        items.append(("metrics (non-zero)", "; ".join(keep) or "none"))
    o.items(items)

    sys.stdout.write(o.text())
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(o.markdown())
        print(f"\nmarkdown written to {a.markdown}")


if __name__ == "__main__":
    main()
