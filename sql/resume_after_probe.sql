-- A probe of endpoint $1 succeeded: resume it, unless a person paused it by
-- hand meanwhile. Returns true if this resumed it.
SELECT webhook.resume_endpoint_id($1, true)
