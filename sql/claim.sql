-- Claim up to $2 due pending rows of endpoint $1, oldest first, under a lease
-- of $3 seconds for relay $4. Autocommit: the row locks last only for this
-- statement; the lease (status in_flight + lease_expires_at) is what keeps
-- other relays away while the request is made. The returned attempts,
-- lease_expires_at and ctid (the address of the row version this claim made)
-- are the fence: a write-back must name all three, so it only lands on the
-- very claim it belongs to. A paused endpoint's rows are not claimed (the
-- check is evaluated once per statement): every relay stops at its next claim
-- when any of them, or a person, pauses the endpoint; its probes go through
-- sql/claim_probe.sql.
UPDATE webhook.outbox o
   SET status = 'in_flight',
       attempts = o.attempts + 1,
       lease_expires_at = now() + make_interval(secs => $3),
       claimed_by = $4
 -- The rows the subquery locked, by their physical address (ctid): a TID
 -- scan, the one plan Postgres has for it, whatever its statistics say. A
 -- join, or id = ANY, left the planner a choice of indexes, and planned
 -- while the outbox looked empty it chose a walk over a whole index, once
 -- per claim. The locks keep these row versions current until the update.
 WHERE o.ctid = ANY (ARRAY(
           SELECT ctid
             FROM webhook.outbox
            WHERE endpoint_id = $1
              AND status = 'pending'
              AND next_attempt_at <= now()
              AND NOT EXISTS (SELECT FROM webhook.endpoints e
                               WHERE e.endpoint_id = $1 AND e.paused_at IS NOT NULL)
            ORDER BY next_attempt_at, id
            LIMIT $2
              FOR UPDATE SKIP LOCKED))
RETURNING o.id, o.event_id, o.attempts, o.payload::text, o.lease_expires_at, o.ctid::text
