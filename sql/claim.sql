-- Claim up to $2 due pending rows of endpoint $1, oldest first, under a lease
-- of $3 seconds for relay $4. Autocommit: the row locks last only for this
-- statement; the lease (status in_flight + lease_expires_at) is what keeps
-- other relays away while the request is made. The returned attempts and
-- lease_expires_at are the fence: a write-back must name both, so it only
-- lands on the very claim it belongs to.
UPDATE webhook.outbox o
   SET status = 'in_flight',
       attempts = o.attempts + 1,
       lease_expires_at = now() + make_interval(secs => $3),
       claimed_by = $4
 -- The ids as an array, not a join: a join's order is the planner's choice,
 -- and planned while the outbox looked empty it walked the whole primary key
 -- once per claim. id = ANY(array) can only be a primary key look-up.
 WHERE o.id = ANY (ARRAY(
           SELECT id
             FROM webhook.outbox
            WHERE endpoint_id = $1
              AND status = 'pending'
              AND next_attempt_at <= now()
            ORDER BY next_attempt_at, id
            LIMIT $2
              FOR UPDATE SKIP LOCKED))
RETURNING o.id, o.event_id, o.attempts, o.payload::text, o.lease_expires_at
