-- Relay $1 stops: it no longer counts among the relays sharing partitions,
-- so the others take its share at their next renewal.
DELETE FROM webhook.relays WHERE name = $1
