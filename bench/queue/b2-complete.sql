-- Prototype B2's write-back: the attempts only (same parameters as
-- b-complete.sql; the row versions are not needed).
INSERT INTO webhook.attempts (outbox_id, attempt, started_at, duration_ms, response_status, response_body, error, relay, outcome)
SELECT r.id, r.attempt, r.started_at, r.ms, r.response_status, r.response_body, r.error, $10, r.status
  FROM unnest($1::bigint[], $2::int[], $3::text[], $4::timestamptz[], $5::int[],
              $6::int[], $7::text[], $8::text[], $9::timestamptz[], $11::text[])
       AS r(id, attempt, status, started_at, ms, response_status, response_body, error,
            next_attempt_at, version)
