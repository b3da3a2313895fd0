-- A page of a big tick's rows by id (sql/queue/read_ids.sql), in id order,
-- still unsent ($2: the endpoint's partition mask).
SELECT o.id, o.event_id, o.ordering_key, o.payload::text, o.ctid::text,
       hashtext(coalesce(o.ordering_key, o.event_id)) & $2 AS part
  FROM webhook.outbox o
 WHERE o.id = ANY ($1::bigint[])
   AND o.status = 'pending'
   AND o.attempts = 0
   AND o.replayed_at IS NULL
 ORDER BY o.id
