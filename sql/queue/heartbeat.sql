-- Relay $1 is alive; returns how many relays are (itself included): those
-- seen within $2 seconds share each endpoint's partitions. Relays not seen
-- for a day (killed, never to return under that name) are forgotten, so the
-- table stays as small as the fleet.
WITH beat AS (
    INSERT INTO webhook.relays AS r (name, seen_at) VALUES ($1, now())
    ON CONFLICT (name) DO UPDATE SET seen_at = now()
    RETURNING r.name
), forgotten AS (
    DELETE FROM webhook.relays r WHERE r.seen_at < now() - interval '1 day'
)
SELECT 1 + count(*)
  FROM webhook.relays r
 WHERE r.seen_at > now() - make_interval(secs => $2)
   AND r.name <> $1
