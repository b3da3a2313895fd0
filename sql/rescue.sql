-- Expired leases back to pending, at most $1 rows per run. The claim that
-- expired still counts as an attempt: the request may have reached the
-- receiver before its relay died, and a row that kills its relay every time
-- must not be retried forever.
UPDATE webhook.outbox o
   SET status = 'pending',
       next_attempt_at = now(),
       last_error = 'lease expired: relay ' || coalesce(o.claimed_by, '?')
                    || ' reported no outcome (the request may have reached the receiver)',
       lease_expires_at = NULL,
       claimed_by = NULL
 -- An array, not a join, as in claim.sql: always a primary key look-up.
 WHERE o.id = ANY (ARRAY(
           SELECT id
             FROM webhook.outbox
            -- Through outbox_queue, whose first column is the endpoint:
            -- every endpoint's in-flight rows, a few dozen each.
            WHERE endpoint_id = ANY (ARRAY(SELECT endpoint_id FROM webhook.endpoints))
              AND status = 'in_flight'
              AND lease_expires_at < now()
            ORDER BY lease_expires_at
            LIMIT $1
              FOR UPDATE SKIP LOCKED))
RETURNING o.id
