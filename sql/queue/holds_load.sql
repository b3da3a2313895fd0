-- At a take-over: the held keys and the keys with parked events of endpoint
-- $1's partitions $2 ($3: the partition mask). held_by is the holding event,
-- NULL for a key that only has parked events; part its partition.
SELECT h.ordering_key, h.outbox_id AS held_by, hashtext(h.ordering_key) & $3 AS part
  FROM webhook.holds h
 WHERE h.endpoint_id = $1
   AND (hashtext(h.ordering_key) & $3) = ANY ($2::int[])
UNION
SELECT DISTINCT p.ordering_key, NULL::bigint, hashtext(p.ordering_key) & $3
  FROM webhook.parked p
 WHERE p.endpoint_id = $1
   AND (hashtext(p.ordering_key) & $3) = ANY ($2::int[])
   AND NOT EXISTS (SELECT FROM webhook.holds h
                    WHERE h.endpoint_id = $1 AND h.ordering_key = p.ordering_key)
