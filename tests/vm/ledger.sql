-- The VM test's pgbench script: one committed row per transaction, tagged with its client, so
-- that pgbench's per-transaction log (-l) tells which rows a snapshot must hold.
INSERT INTO ledger (client) VALUES (:client_id);
