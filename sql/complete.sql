-- Write back a batch of attempt outcomes and record each attempt, in one
-- statement. The fence: a row is only updated while it is still the very row
-- version its claim made (the claim's ctid), in_flight under that claim's
-- attempt number and lease, so a relay whose lease ran out cannot overwrite a
-- newer claim's outcome, even after a replay reset the attempt count; its
-- attempt is not recorded.
-- $1 ids, $2 attempt numbers, $3 new statuses, $4 start times, $5 durations
-- (ms), $6 response statuses, $7 body excerpts, $8 errors, $9 next attempt
-- times (NULL: unchanged), $10 relay name, $11 the claims' lease ends, $12
-- the claims' row versions (ctid, as text).
WITH r AS (
    SELECT *
      FROM unnest($1::bigint[], $2::int[], $3::text[], $4::timestamptz[], $5::int[],
                  $6::int[], $7::text[], $8::text[], $9::timestamptz[], $11::timestamptz[],
                  $12::text[]::tid[])
           AS r(id, attempt, status, started_at, ms, response_status, response_body, error,
                next_attempt_at, lease, version)
), updated AS (
    -- Rows are found by their address (a TID scan), whatever the planner
    -- thinks of the table's size. lease_expires_at is set only while a row
    -- is in_flight, so matching it also says the row is still in flight.
    UPDATE webhook.outbox o
       SET status = r.status,
           response_status = r.response_status,
           response_body = r.response_body,
           response_ms = r.ms,
           last_error = r.error,
           delivered_at = CASE WHEN r.status = 'delivered'
                               THEN r.started_at + r.ms * interval '1 millisecond' END,
           next_attempt_at = coalesce(r.next_attempt_at, o.next_attempt_at),
           lease_expires_at = NULL,
           claimed_by = NULL
      FROM r
     WHERE o.ctid = ANY ($12::text[]::tid[])
       AND o.ctid = r.version
       AND o.id = r.id
       AND o.attempts = r.attempt
       AND o.lease_expires_at = r.lease
    RETURNING o.id, r.attempt, r.started_at, r.ms, r.response_status, r.response_body, r.error
)
INSERT INTO webhook.attempts (outbox_id, attempt, started_at, duration_ms, response_status, response_body, error, relay)
SELECT id, attempt, started_at, ms, response_status, response_body, error, $10
  FROM updated
