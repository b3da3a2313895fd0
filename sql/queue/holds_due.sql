-- Held heads of endpoint $1 whose retry is due (all of them, due or not,
-- when $6: a probe), of the partitions $2 this relay owns ($3: the partition
-- mask), except keys whose head is in flight ($4), at most $5, soonest first.
SELECT h.ordering_key, o.id, o.event_id, o.attempts, o.payload::text, o.ctid::text,
       hashtext(h.ordering_key) & $3 AS part
  FROM webhook.holds h
  JOIN webhook.outbox o ON o.id = h.outbox_id
 WHERE h.endpoint_id = $1
   AND (h.next_attempt_at <= now() OR $6)
   AND (hashtext(h.ordering_key) & $3) = ANY ($2::int[])
   AND h.ordering_key <> ALL ($4::text[])
   AND o.status = 'pending'
 ORDER BY h.next_attempt_at
 LIMIT $5
