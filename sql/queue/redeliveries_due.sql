-- Redeliveries of endpoint $1 that are due (replayed rows; retries of
-- unordered events), of the partitions $2 this relay owns ($3: the partition
-- mask), except those in flight ($4), at most $5, soonest first.
SELECT o.id, o.event_id, o.ordering_key, o.attempts, o.payload::text, o.ctid::text,
       hashtext(coalesce(o.ordering_key, o.event_id)) & $3 AS part
  FROM webhook.redeliveries r
  JOIN webhook.outbox o ON o.id = r.outbox_id
 WHERE r.endpoint_id = $1
   AND r.next_attempt_at <= now()
   AND r.outbox_id <> ALL ($4::bigint[])
   AND (hashtext(coalesce(o.ordering_key, o.event_id)) & $3) = ANY ($2::int[])
   AND o.status = 'pending'
 ORDER BY r.next_attempt_at
 LIMIT $5
