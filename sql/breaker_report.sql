-- The circuit breaker's report for endpoint $1: this relay's latest success
-- ($2) and first failure after it ($3) since its last report, and the
-- endpoint's pause_after in seconds ($4, NULL: off). Returns the endpoint's
-- state (migrations/V7__circuit_breaker.sql).
SELECT paused_at, paused_by, failing_since, last_probe_at, enabled, paused_now
  FROM webhook.breaker_report($1, $2, $3, make_interval(secs => $4))
