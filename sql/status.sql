-- `outbox-relay status`: one row per endpoint with its state (running,
-- paused, disabled) and circuit breaker columns, its rows by status, the
-- creation time of its oldest pending row, its attempts of the last five
-- minutes (a success is an attempt without error), its newest failed
-- attempt (through the attempts_failed index), and its held keys (how many,
-- and the one held longest). Pending, in flight and dead come from
-- webhook.endpoint_backlog (the queue's tables and the rows after the
-- partitions' ticks). Delivered is the endpoint's rows less those: counting
-- them reads the endpoint's entries of outbox_endpoint_xid (an index-only
-- scan where vacuum has marked the pages all-visible), not the rows. Fine
-- for a command run by hand, which is why /metrics does not do it.
SELECT e.name,
       e.enabled,
       b.pending,
       b.in_flight,
       greatest(c.total - b.pending - b.dead, 0) AS delivered,
       b.dead,
       extract(epoch FROM now() - b.oldest_pending_at)::float8 AS oldest_pending_seconds,
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
       r.probes AS probes_5m,
       hk.held AS held_keys,
       ho.ordering_key AS held_key,
       ho.outbox_id AS held_outbox_id,
       ho.held_since
  FROM webhook.endpoints e
 CROSS JOIN LATERAL webhook.endpoint_backlog(e.endpoint_id) b
 CROSS JOIN LATERAL (
        SELECT count(*) AS total FROM webhook.outbox o WHERE o.endpoint_id = e.endpoint_id) c
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
 CROSS JOIN LATERAL (
        SELECT count(*) AS held FROM webhook.holds h WHERE h.endpoint_id = e.endpoint_id) hk
  LEFT JOIN LATERAL (
        SELECT h.ordering_key, h.outbox_id, h.held_since
          FROM webhook.holds h
         WHERE h.endpoint_id = e.endpoint_id
         ORDER BY h.held_since, h.outbox_id
         LIMIT 1) ho ON true
 ORDER BY e.name
