-- `outbox-relay status`: one row per endpoint with its state (running,
-- paused, disabled) and circuit breaker columns, its rows by status, the
-- creation time of its oldest pending row, its attempts of the last five
-- minutes (a success is an attempt without error), and its newest failed
-- attempt (through the attempts_failed index). Counting delivered rows reads
-- the endpoint's retained history: fine for a command run by hand, which is
-- why /metrics does not do it.
SELECT e.name,
       e.enabled,
       c.pending,
       c.in_flight,
       c.delivered,
       c.dead,
       extract(epoch FROM now() - c.oldest_pending_at)::float8 AS oldest_pending_seconds,
       r.delivered AS delivered_5m,
       r.failed AS failed_5m,
       le.started_at AS error_at,
       le.outbox_id AS error_outbox_id,
       le.event_id AS error_event_id,
       le.attempt AS error_attempt,
       le.response_status AS error_response_status,
       le.error,
       CASE WHEN NOT e.enabled THEN 'disabled' WHEN e.paused_at IS NOT NULL THEN 'paused' ELSE 'running' END AS state,
       e.paused_at,
       e.paused_by,
       e.failing_since,
       e.last_probe_at,
       r.probes AS probes_5m
  FROM webhook.endpoints e
 CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE o.status = 'pending') AS pending,
               count(*) FILTER (WHERE o.status = 'in_flight') AS in_flight,
               count(*) FILTER (WHERE o.status = 'delivered') AS delivered,
               count(*) FILTER (WHERE o.status = 'dead') AS dead,
               min(o.created_at) FILTER (WHERE o.status = 'pending') AS oldest_pending_at
          FROM webhook.outbox o
         WHERE o.endpoint_id = e.endpoint_id) c
 CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE a.error IS NULL) AS delivered,
               count(*) FILTER (WHERE a.error IS NOT NULL) AS failed,
               count(*) FILTER (WHERE a.probe) AS probes
          FROM webhook.attempts a
          JOIN webhook.outbox o ON o.id = a.outbox_id
         WHERE o.endpoint_id = e.endpoint_id
           AND a.started_at > now() - interval '5 minutes') r
  LEFT JOIN LATERAL (
        SELECT a.started_at, a.outbox_id, o.event_id, a.attempt, a.response_status, a.error
          FROM webhook.attempts a
          JOIN webhook.outbox o ON o.id = a.outbox_id
         WHERE o.endpoint_id = e.endpoint_id
           AND a.error IS NOT NULL
         ORDER BY a.started_at DESC
         LIMIT 1) le ON true
 ORDER BY e.name
