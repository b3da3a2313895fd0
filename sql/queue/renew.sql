-- Renew relay $2's leases on endpoint $1's partitions for $3 seconds; the
-- partitions it still owns come back (one missing was taken over).
UPDATE webhook.partitions
   SET lease_expires_at = now() + make_interval(secs => $3)
 WHERE endpoint_id = $1
   AND owner = $2
RETURNING partition
