-- Write back a probe's outcome (sql/claim_probe.sql), fenced by the claim's
-- row version ($3, ctid as text) and lease ($2) like sql/complete.sql.
-- Delivered ($4 true): the row is delivered and the probe counts as its next
-- attempt. Failed: the row is pending again, due as before, its attempt count
-- unchanged. Either way the probe is recorded in webhook.attempts with
-- probe = true (as attempt attempts + 1: the attempt it stood in for), unless
-- $11 is false (the probe was abandoned at shutdown, nothing was learned).
-- $1 id, $5 start, $6 ms, $7 response status, $8 body excerpt, $9 error,
-- $10 relay name.
WITH updated AS (
    UPDATE webhook.outbox o
       SET status = CASE WHEN $4 THEN 'delivered' ELSE 'pending' END,
           attempts = o.attempts + CASE WHEN $4 THEN 1 ELSE 0 END,
           response_status = CASE WHEN $11 THEN $7::int ELSE o.response_status END,
           response_body = CASE WHEN $11 THEN $8::text ELSE o.response_body END,
           response_ms = CASE WHEN $11 THEN $6::int ELSE o.response_ms END,
           last_error = CASE WHEN $11 THEN $9::text ELSE o.last_error END,
           delivered_at = CASE WHEN $4 THEN $5::timestamptz + $6::int * interval '1 millisecond' END,
           lease_expires_at = NULL,
           claimed_by = NULL
     WHERE o.ctid = $3::text::tid
       AND o.id = $1
       AND o.lease_expires_at = $2
    RETURNING o.id, o.attempts
)
INSERT INTO webhook.attempts (outbox_id, attempt, started_at, duration_ms, response_status, response_body, error, relay, probe)
SELECT id, attempts + CASE WHEN $4 THEN 0 ELSE 1 END, $5, $6, $7, $8, $9, $10, true
  FROM updated
 WHERE $11
