-- Prototype B's write-back: the outcome onto the outbox row (no indexed
-- column changes, so a HOT update where the page has room) and the attempt,
-- in one statement. Fenced by the row version the read returned and the
-- attempt count it had. $1 ids, $2 attempt numbers, $3 statuses, $4 start
-- times, $5 durations, $6 response statuses, $7 bodies, $8 errors, $9 next
-- attempt times, $10 relay, $11 row versions (ctid).
WITH r AS (
    SELECT *
      FROM unnest($1::bigint[], $2::int[], $3::text[], $4::timestamptz[], $5::int[],
                  $6::int[], $7::text[], $8::text[], $9::timestamptz[], $11::text[]::tid[])
           AS r(id, attempt, status, started_at, ms, response_status, response_body, error,
                next_attempt_at, version)
), updated AS (
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
       AND o.id = r.id
       AND o.attempts = r.attempt - 1
    RETURNING o.id, r.attempt, r.started_at, r.ms, r.response_status, r.response_body, r.error
)
INSERT INTO webhook.attempts (outbox_id, attempt, started_at, duration_ms, response_status, response_body, error, relay)
SELECT id, attempt, started_at, ms, response_status, response_body, error, $10
  FROM updated
