-- Take up to $4 of endpoint $1's partitions that are free or whose lease
-- expired, for relay $2, under a lease of $3 seconds. Returns each with its
-- cursor (the new owner reads from there) and whether it was taken over from
-- a relay whose lease had expired.
WITH free AS (
    SELECT endpoint_id, partition, owner IS NOT NULL AS taken_over
      FROM webhook.partitions
     WHERE endpoint_id = $1
       AND (owner IS NULL OR lease_expires_at < now())
     ORDER BY partition
     LIMIT $4
       FOR UPDATE SKIP LOCKED
)
UPDATE webhook.partitions p
   SET owner = $2,
       epoch = p.epoch + 1,
       lease_expires_at = now() + make_interval(secs => $3),
       in_flight = 0,
       updated_at = now()
  FROM free f
 WHERE p.endpoint_id = f.endpoint_id
   AND p.partition = f.partition
RETURNING p.partition, p.tick::text, f.taken_over
