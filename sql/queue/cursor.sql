-- Move the cursor of endpoint $1's partitions $3 owned by relay $5 to tick
-- $2 (every row of theirs visible in it is settled, held or parked), and
-- record how many events of each are in flight ($4).
UPDATE webhook.partitions p
   SET tick = $2::text::pg_snapshot,
       in_flight = c.n,
       updated_at = now()
  FROM unnest($3::int[], $4::int[]) AS c(part, n)
 WHERE p.endpoint_id = $1
   AND p.partition = c.part
   AND p.owner = $5
