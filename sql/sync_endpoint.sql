-- Mirror one configured endpoint (upsert by name). $1 name, $2 url (password
-- redacted), $3 events, $4 enabled. Returns its endpoint_id.
INSERT INTO webhook.endpoints AS e (name, url, events, enabled)
VALUES ($1, $2, $3, $4)
ON CONFLICT (name) DO UPDATE
   SET url = EXCLUDED.url,
       events = EXCLUDED.events,
       enabled = EXCLUDED.enabled,
       updated_at = now()
RETURNING e.endpoint_id
