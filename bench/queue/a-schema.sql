-- Prototype A: today's per-row claim plus a per-key head check. The writer
-- pays for one more partial index, the key's unsettled rows in id order,
-- which the claim probes for every candidate row.
CREATE INDEX outbox_key_head ON webhook.outbox (endpoint_id, ordering_key, id)
    WHERE status IN ('pending', 'in_flight');
