-- Relay $1 is alive; returns how many relays are (itself included): those
-- seen within $2 seconds share each endpoint's partitions.
WITH beat AS (
    INSERT INTO webhook.relays AS r (name, seen_at) VALUES ($1, now())
    ON CONFLICT (name) DO UPDATE SET seen_at = now()
    RETURNING r.name
)
SELECT 1 + count(*)
  FROM webhook.relays r
 WHERE r.seen_at > now() - make_interval(secs => $2)
   AND r.name <> $1
