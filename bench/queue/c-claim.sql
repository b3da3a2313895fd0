-- Prototype C's claim: up to $2 due heads of endpoint $1, each pushed a lease
-- ($3 seconds) ahead for relay $4, with their events.
WITH c AS (
    UPDATE webhook.key_heads h
       SET next_attempt_at = now() + make_interval(secs => $3),
           claimed_by = $4
     WHERE h.ctid = ANY (ARRAY(
               SELECT ctid
                 FROM webhook.key_heads
                WHERE endpoint_id = $1
                  AND next_attempt_at <= now()
                ORDER BY next_attempt_at
                LIMIT $2
                  FOR UPDATE SKIP LOCKED))
    RETURNING h.head_id
)
SELECT o.id, o.event_id, o.attempts, o.payload::text AS payload, o.ctid::text AS ctid
  FROM webhook.outbox o
 WHERE o.id = ANY (ARRAY(SELECT head_id FROM c))
