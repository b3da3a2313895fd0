-- Whether this relay sends endpoint $1's next probe: it is paused by the
-- breaker and its last probe is at least $2 seconds old. Of several relays
-- asking at once one wins; the others wait on its row lock and then find
-- last_probe_at fresh.
UPDATE webhook.endpoints e
   SET last_probe_at = now()
 WHERE e.endpoint_id = $1
   AND e.paused_by = 'auto'
   AND e.enabled
   AND (e.last_probe_at IS NULL OR e.last_probe_at <= now() - make_interval(secs => $2))
RETURNING true
