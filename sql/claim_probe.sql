-- Claim one probe of endpoint $1, paused by the breaker, if its last probe is
-- at least $2 seconds old: the endpoint's next pending row (earliest
-- next_attempt_at, whether or not its backoff has run out; while paused the
-- probe interval sets the pace), under a lease of $3 seconds for relay $4.
-- The update of last_probe_at is what makes relays take turns: of several
-- relays asking at once, one wins, the others wait on its row lock and then
-- find last_probe_at fresh. The claim does not count an attempt (a failed
-- probe spends none of the row's budget); sql/probe_finish.sql writes the
-- outcome. Returns what sql/claim.sql returns.
WITH won AS (
    UPDATE webhook.endpoints e
       SET last_probe_at = now()
     WHERE e.endpoint_id = $1
       AND e.paused_by = 'auto'
       AND e.enabled
       AND (e.last_probe_at IS NULL OR e.last_probe_at <= now() - make_interval(secs => $2))
    RETURNING e.endpoint_id
)
UPDATE webhook.outbox o
   SET status = 'in_flight',
       lease_expires_at = now() + make_interval(secs => $3),
       claimed_by = $4
 WHERE o.ctid = ANY (ARRAY(
           SELECT ctid
             FROM webhook.outbox
            WHERE endpoint_id = (SELECT endpoint_id FROM won)
              AND status = 'pending'
            ORDER BY next_attempt_at, id
            LIMIT 1
              FOR UPDATE SKIP LOCKED))
RETURNING o.id, o.event_id, o.attempts, o.payload::text, o.lease_expires_at, o.ctid::text
