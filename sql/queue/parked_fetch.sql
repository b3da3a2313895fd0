-- The next parked events of endpoint $1's keys $2, each after its id $3, at
-- most $4 per key, in id order: what goes once a held key moves on ($5: the
-- endpoint's partition mask).
SELECT k.ordering_key, o.id, o.event_id, o.attempts, o.payload::text, o.ctid::text,
       hashtext(k.ordering_key) & $5 AS part
  FROM unnest($2::text[], $3::bigint[]) AS k(ordering_key, after)
 CROSS JOIN LATERAL (
        SELECT o.id, o.event_id, o.attempts, o.payload, o.ctid
          FROM webhook.parked p
          JOIN webhook.outbox o ON o.id = p.outbox_id
         WHERE p.endpoint_id = $1
           AND p.ordering_key = k.ordering_key
           AND p.outbox_id > k.after
           AND o.status = 'pending'
         ORDER BY p.outbox_id
         LIMIT $4) o
 ORDER BY k.ordering_key, o.id
