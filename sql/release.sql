-- Give claimed rows back unattempted (shutdown deadline passed): pending
-- again, due now, and the claim does not count as an attempt. Fenced like
-- complete.sql. $1 ids, $2 attempt numbers, $3 lease ends of their claims,
-- $4 the claims' row versions (ctid, as text).
UPDATE webhook.outbox o
   SET status = 'pending',
       attempts = o.attempts - 1,
       next_attempt_at = now(),
       lease_expires_at = NULL,
       claimed_by = NULL
  FROM unnest($1::bigint[], $2::int[], $3::timestamptz[], $4::text[]::tid[])
           AS r(id, attempt, lease, version)
 WHERE o.ctid = ANY ($4::text[]::tid[])
   AND o.ctid = r.version
   AND o.id = r.id
   AND o.attempts = r.attempt
   AND o.lease_expires_at = r.lease
