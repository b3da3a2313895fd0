-- `outbox-relay pause --endpoint $1`: a hand pause (no probes). Returns true
-- if the endpoint was running.
SELECT webhook.pause_endpoint($1)
