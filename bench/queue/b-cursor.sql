-- Prototype B: the cursor of every partition relay $3 owns of endpoint $1
-- moves to tick $2 (all their rows visible in it are settled).
UPDATE webhook.partitions
   SET tick = $2::text::pg_snapshot, updated_at = now()
 WHERE endpoint_id = $1 AND owner = $3
