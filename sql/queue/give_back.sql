-- Relay $2 gives endpoint $1's partitions $3 back, their cursor at tick $4
-- (unchanged when NULL): another relay takes them at once.
UPDATE webhook.partitions
   SET owner = NULL,
       lease_expires_at = NULL,
       in_flight = 0,
       tick = coalesce($4::text::pg_snapshot, tick),
       updated_at = now()
 WHERE endpoint_id = $1
   AND owner = $2
   AND partition = ANY ($3::int[])
