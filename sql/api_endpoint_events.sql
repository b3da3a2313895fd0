-- Status API: one page of endpoint $1's rows, in id order after id $2 (the
-- keyset cursor), optionally only status $3 and rows created at or after $4;
-- at most $5 rows. There is no index on status: dead rows are found through
-- webhook.dead_rows, pending ones through webhook.unsettled (the queue's
-- tables and the rows after the partitions' ticks), the rest by walking
-- outbox_pkey from $2 with the endpoint and status as filters (a page of an
-- endpoint that has few rows among many may read many rows). Only the
-- branch for $3 runs; 'in_flight' (no row has that status since V10) runs none.
WITH page AS (
    SELECT d.outbox_id AS id
      FROM webhook.dead_rows d
      JOIN webhook.outbox x ON x.id = d.outbox_id
     WHERE $3::text = 'dead'
       AND d.endpoint_id = $1 AND d.outbox_id > $2
       AND x.status = 'dead'
       AND ($4::timestamptz IS NULL OR x.created_at >= $4)
    UNION ALL
    SELECT u.outbox_id
      FROM webhook.unsettled($1) u
      JOIN webhook.outbox x ON x.id = u.outbox_id
     WHERE $3::text = 'pending'
       AND u.outbox_id > $2
       AND x.status = 'pending'
       AND ($4::timestamptz IS NULL OR x.created_at >= $4)
    UNION ALL
    SELECT x.id
      FROM webhook.outbox x
     WHERE ($3::text IS NULL OR $3::text = 'delivered')
       AND x.endpoint_id = $1 AND x.id > $2
       AND ($3::text IS NULL OR x.status = 'delivered')
       AND ($4::timestamptz IS NULL OR x.created_at >= $4)
)
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
 WHERE o.id = ANY (ARRAY(SELECT p.id FROM page p ORDER BY p.id LIMIT $5))
 ORDER BY o.id
