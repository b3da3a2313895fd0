-- Status API: one page of endpoint $1's rows, in id order after id $2 (the
-- keyset cursor), optionally only status $3 and rows created at or after $4;
-- at most $5 rows.
SELECT o.id,
       o.event_id,
       o.event_code,
       o.payload,
       o.created_at,
       o.status,
       o.attempts,
       o.next_attempt_at,
       o.delivered_at,
       o.response_status,
       o.response_body,
       o.response_ms,
       o.last_error
  FROM webhook.outbox o
 WHERE o.endpoint_id = $1
   AND o.id > $2
   AND ($3::text IS NULL OR o.status = $3)
   AND ($4::timestamptz IS NULL OR o.created_at >= $4)
 ORDER BY o.id
 LIMIT $5
