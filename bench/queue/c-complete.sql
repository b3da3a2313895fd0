-- Prototype C's write-back: the outcome onto the outbox row (HOT where the
-- page has room), the attempt, and each settled key's head moved to its next
-- event (or removed when the settled event was its tail). Parameters as
-- b-complete.sql.
WITH r AS (
    SELECT *
      FROM unnest($1::bigint[], $2::int[], $3::text[], $4::timestamptz[], $5::int[],
                  $6::int[], $7::text[], $8::text[], $9::timestamptz[], $11::text[]::tid[])
           AS r(id, attempt, status, started_at, ms, response_status, response_body, error,
                next_attempt_at, version)
), updated AS (
    UPDATE webhook.outbox o
       SET status = r.status,
           attempts = r.attempt,
           response_status = r.response_status,
           response_body = r.response_body,
           response_ms = r.ms,
           last_error = r.error,
           delivered_at = CASE WHEN r.status = 'delivered'
                               THEN r.started_at + r.ms * interval '1 millisecond' END,
           next_attempt_at = coalesce(r.next_attempt_at, o.next_attempt_at)
      FROM r
     WHERE o.ctid = ANY ($11::text[]::tid[])
       AND o.ctid = r.version
       AND o.id = r.id
       AND o.attempts = r.attempt - 1
    RETURNING o.id, o.endpoint_id, o.ordering_key, r.status, r.attempt, r.started_at, r.ms,
              r.response_status, r.response_body, r.error
), logged AS (
    INSERT INTO webhook.attempts (outbox_id, attempt, started_at, duration_ms, response_status, response_body, error, relay)
    SELECT id, attempt, started_at, ms, response_status, response_body, error, $10
      FROM updated
), moved AS (
    UPDATE webhook.key_heads h
       SET head_id = n.next_id, next_attempt_at = now(), claimed_by = NULL
      FROM updated u
     CROSS JOIN LATERAL (
            SELECT min(o2.id) AS next_id
              FROM webhook.outbox o2
             WHERE o2.endpoint_id = u.endpoint_id
               AND o2.ordering_key = u.ordering_key
               AND o2.id > u.id) n
     WHERE u.status IN ('delivered', 'dead')
       AND h.endpoint_id = u.endpoint_id
       AND h.ordering_key = u.ordering_key
       AND h.head_id = u.id
       AND h.tail_id > u.id
)
DELETE FROM webhook.key_heads h
 USING updated u
 WHERE u.status IN ('delivered', 'dead')
   AND h.endpoint_id = u.endpoint_id
   AND h.ordering_key = u.ordering_key
   AND h.head_id = u.id
   AND h.tail_id = u.id
