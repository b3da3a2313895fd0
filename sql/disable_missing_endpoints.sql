-- Endpoints dropped from the config are disabled, never deleted. $1 the names
-- still configured.
UPDATE webhook.endpoints
   SET enabled = false, updated_at = now()
 WHERE enabled AND NOT (name = ANY ($1::text[]))
