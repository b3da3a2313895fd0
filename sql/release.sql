-- Give claimed rows back unattempted (shutdown deadline passed): pending
-- again, due now, and the claim does not count as an attempt. Fenced like
-- complete.sql. $1 ids, $2 attempt numbers they were claimed with.
UPDATE webhook.outbox o
   SET status = 'pending',
       attempts = o.attempts - 1,
       next_attempt_at = now(),
       lease_expires_at = NULL,
       claimed_by = NULL
  FROM unnest($1::bigint[], $2::int[]) AS r(id, attempt)
 WHERE o.id = r.id
   AND o.attempts = r.attempt
   AND o.status = 'in_flight'
