-- Write back a batch of attempt outcomes in one statement: the outcome onto
-- the outbox row, the attempt into webhook.attempts, and what the order
-- needs: a held key's webhook.holds row (made by a retry of an ordered
-- event, removed when it is delivered or dead), a parked event's row
-- removed once it has been sent, a redelivery's row moved to its retry time
-- or removed, a dead row listed in webhook.dead_rows.
--
-- No indexed column changes on the outbox row, so the update is HOT where
-- the page has room (fillfactor 45). The fence is the row version the read
-- returned (ctid) and the attempt count it had: a row a DBA changed or
-- replayed since, or one another relay wrote after a take-over, is not
-- overwritten, and its attempt is not recorded.
--
-- $1 ids, $2 attempt numbers (the count after this attempt), $3 statuses
-- (delivered, pending: will retry, dead), $4 start times, $5 durations (ms),
-- $6 response statuses, $7 body excerpts, $8 errors, $9 retry times, $10
-- relay name, $11 row versions (ctid as text), $12 ordering keys (NULL:
-- unordered), $13 where each event came from ('log', 'parked', 'held': a held
-- head, 'redelivery'), $14 whether its retries go through
-- webhook.redeliveries (unordered, or replayed), $15 whether the attempt was
-- a probe of a paused endpoint (a delivered one; a failed probe is
-- sql/queue/probe_failed.sql). Each table beside the outbox is only looked at
-- for the rows that can have a row in it.
WITH r AS (
    SELECT *
      FROM unnest($1::bigint[], $2::int[], $3::text[], $4::timestamptz[], $5::int[],
                  $6::int[], $7::text[], $8::text[], $9::timestamptz[], $11::text[]::tid[],
                  $12::text[], $13::text[], $14::boolean[], $15::boolean[])
           AS r(id, attempt, status, started_at, ms, response_status, response_body, error,
                next_attempt_at, version, ordering_key, source, loose, probe)
), updated AS (
    -- Rows are found by their address (a TID scan); `id + 0` keeps the
    -- planner from walking the primary key instead.
    UPDATE webhook.outbox o
       SET status = r.status,
           attempts = r.attempt,
           response_status = r.response_status,
           response_body = r.response_body,
           response_ms = r.ms,
           last_error = r.error,
           delivered_at = CASE WHEN r.status = 'delivered'
                               THEN r.started_at + r.ms * interval '1 millisecond' END,
           next_attempt_at = coalesce(r.next_attempt_at, o.next_attempt_at)
      FROM r
     WHERE o.ctid = ANY ($11::text[]::tid[])
       AND o.ctid = r.version
       AND o.id + 0 = r.id
       AND o.attempts = r.attempt - 1
    RETURNING o.id, o.endpoint_id, r.attempt, r.status, r.started_at, r.ms, r.response_status,
              r.response_body, r.error, r.next_attempt_at, r.ordering_key, r.source, r.loose, r.probe
), held AS (
    INSERT INTO webhook.holds AS h (endpoint_id, ordering_key, outbox_id, next_attempt_at)
    SELECT u.endpoint_id, u.ordering_key, u.id, u.next_attempt_at
      FROM updated u
     WHERE u.status = 'pending' AND NOT u.loose
    ON CONFLICT (endpoint_id, ordering_key) DO UPDATE
       SET held_since = CASE WHEN h.outbox_id = excluded.outbox_id THEN h.held_since ELSE now() END,
           outbox_id = excluded.outbox_id,
           next_attempt_at = excluded.next_attempt_at
), unheld AS (
    -- A key whose head settled and whose next event failed in this same
    -- batch stays held (by that event, through the upsert above): one
    -- statement must not both delete and update its row.
    DELETE FROM webhook.holds h
     USING updated u
     WHERE u.status <> 'pending' AND u.source = 'held'
       AND h.endpoint_id = u.endpoint_id AND h.ordering_key = u.ordering_key AND h.outbox_id = u.id
       AND NOT EXISTS (SELECT FROM updated n
                        WHERE n.status = 'pending' AND NOT n.loose
                          AND n.endpoint_id = u.endpoint_id AND n.ordering_key = u.ordering_key)
), unparked AS (
    DELETE FROM webhook.parked p
     USING updated u
     WHERE u.source = 'parked'
       AND p.endpoint_id = u.endpoint_id AND p.ordering_key = u.ordering_key AND p.outbox_id = u.id
), retried AS (
    INSERT INTO webhook.redeliveries AS d (outbox_id, endpoint_id, next_attempt_at)
    SELECT u.id, u.endpoint_id, u.next_attempt_at
      FROM updated u
     WHERE u.status = 'pending' AND u.loose
    ON CONFLICT (outbox_id) DO UPDATE SET next_attempt_at = excluded.next_attempt_at
), redelivered AS (
    DELETE FROM webhook.redeliveries d
     USING updated u
     WHERE u.status <> 'pending' AND u.source = 'redelivery' AND d.outbox_id = u.id
), died AS (
    INSERT INTO webhook.dead_rows (outbox_id, endpoint_id)
    SELECT u.id, u.endpoint_id FROM updated u WHERE u.status = 'dead'
    ON CONFLICT DO NOTHING
)
INSERT INTO webhook.attempts (outbox_id, attempt, started_at, duration_ms, response_status, response_body, error, relay, probe)
SELECT id, attempt, started_at, ms, response_status, response_body, error, $10, probe
  FROM updated
