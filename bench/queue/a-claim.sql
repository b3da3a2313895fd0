-- Prototype A's claim: sql/claim.sql, taking a row only when it is the head
-- of its key (no earlier row of the same endpoint and key still pending or
-- in flight). $1 endpoint, $2 rows, $3 lease seconds, $4 relay.
UPDATE webhook.outbox o
   SET status = 'in_flight',
       attempts = o.attempts + 1,
       lease_expires_at = now() + make_interval(secs => $3),
       claimed_by = $4
 WHERE o.ctid = ANY (ARRAY(
           SELECT c.ctid
             FROM webhook.outbox c
            WHERE c.endpoint_id = $1
              AND c.status = 'pending'
              AND c.next_attempt_at <= now()
              AND (c.ordering_key IS NULL OR NOT EXISTS (
                      SELECT 1
                        FROM webhook.outbox h
                       WHERE h.endpoint_id = c.endpoint_id
                         AND h.ordering_key = c.ordering_key
                         AND h.status IN ('pending', 'in_flight')
                         AND h.id < c.id))
            ORDER BY c.next_attempt_at, c.id
            LIMIT $2
              FOR UPDATE SKIP LOCKED))
RETURNING o.id, o.event_id, o.attempts, o.payload::text, o.lease_expires_at, o.ctid::text
