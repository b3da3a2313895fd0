-- Write back a batch of outcomes that are all deliveries of events read
-- from the log (the common case: sql/queue/write_back.sql is the general
-- one): the outcome onto the outbox row, a HOT update where the page has
-- room, and the attempt, in one statement; no held key, parked event,
-- redelivery or dead row can be involved. Fenced as write_back.sql is, by
-- the row version read and its attempt count. $1 ids, $2 attempt numbers
-- (the count after this attempt), $3 statuses (all 'delivered'), $4 start
-- times, $5 durations (ms), $6 response statuses, $7 body excerpts, $8
-- errors, $9 retry times, $10 relay name, $11 row versions (ctid as text),
-- $12 whether the attempt was a probe.
WITH r AS (
    SELECT *
      FROM unnest($1::bigint[], $2::int[], $3::text[], $4::timestamptz[], $5::int[],
                  $6::int[], $7::text[], $8::text[], $9::timestamptz[], $11::text[]::tid[],
                  $12::boolean[])
           AS r(id, attempt, status, started_at, ms, response_status, response_body, error,
                next_attempt_at, version, probe)
), updated AS (
    -- By address (a TID scan); `id + 0` keeps the planner off the primary key.
    UPDATE webhook.outbox o
       SET status = r.status,
           attempts = r.attempt,
           response_status = r.response_status,
           response_body = r.response_body,
           response_ms = r.ms,
           last_error = r.error,
           delivered_at = r.started_at + r.ms * interval '1 millisecond',
           next_attempt_at = coalesce(r.next_attempt_at, o.next_attempt_at)
      FROM r
     WHERE o.ctid = ANY ($11::text[]::tid[])
       AND o.ctid = r.version
       AND o.id + 0 = r.id
       AND o.attempts = r.attempt - 1
    RETURNING o.id, r.attempt, r.started_at, r.ms, r.response_status, r.response_body, r.error, r.probe
)
INSERT INTO webhook.attempts (outbox_id, attempt, started_at, duration_ms, response_status, response_body, error, relay, probe)
SELECT id, attempt, started_at, ms, response_status, response_body, error, $10, probe
  FROM updated
