-- A failed probe of row $1: recorded in webhook.attempts with probe = true,
-- as attempt number $2 (the one it stood in for); the row itself is left as
-- it is (a failed probe spends none of its budget, and its version stays the
-- one the relay holds). $3 start, $4 ms, $5 response status, $6 body
-- excerpt, $7 error, $8 relay name.
INSERT INTO webhook.attempts (outbox_id, attempt, started_at, duration_ms, response_status, response_body, error, relay, probe)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, true)
