#!/usr/bin/env python3
"""Every ledger transaction that pgbench saw committed before the pre hook is in the snapshot.

    check_commits.py PGBENCH_LOG T_PRE RESTORED_COUNTS

PGBENCH_LOG: pgbench's per-transaction log (-l; one file or several concatenated), lines
"client_id transaction_no time script_no time_epoch time_us ...", where script 0 is
ledger.sql (one INSERT INTO ledger (client) per transaction) and time_epoch.time_us is when the
commit was acknowledged. T_PRE: the guest's clock when the pre hook started (seconds, float).
RESTORED_COUNTS: "client count" lines, the ledger rows per client found in the restored copy.

A client runs its transactions one after another, so the snapshot is right for a client when it
holds at least as many of its ledger rows as pgbench logged committed before T_PRE. Prints one
line per client and exits 1 when a client has fewer.
"""
import collections
import sys


def main() -> int:
    log_path, t_pre, counts_path = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    before = collections.Counter()
    total = collections.Counter()
    for line in open(log_path):
        fields = line.split()
        if len(fields) < 6 or fields[3] != "0" or not fields[2].isdigit():
            continue  # another script, or a failed/skipped transaction
        client = int(fields[0])
        committed = int(fields[4]) + int(fields[5]) / 1e6
        total[client] += 1
        if committed < t_pre:
            before[client] += 1
    restored = collections.Counter()
    for line in open(counts_path):
        if line.strip():
            client, count = line.replace("|", " ").split()
            restored[int(client)] = int(count)
    if not total:
        print("no ledger transaction in pgbench's log")
        return 1
    ok = True
    for client in sorted(total):
        verdict = "ok" if restored[client] >= before[client] else "MISSING"
        ok = ok and verdict == "ok"
        print(f"client {client}: {before[client]} committed before the pre hook, "
              f"{restored[client]} restored, {total[client]} in the whole run: {verdict}")
    if sum(before.values()) == 0:
        print("no ledger commit before the pre hook: the test proves nothing")
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
