-- `outbox-relay resume --endpoint $1`: clears a pause (by hand or by the
-- breaker). Returns true if the endpoint was paused.
SELECT webhook.resume_endpoint($1)
