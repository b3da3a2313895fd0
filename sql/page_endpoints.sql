-- The status page (GET /): per endpoint its state, its attempts in each of
-- the last $1 minutes (oldest first, the current minute last) from
-- webhook.endpoint_minutes, its backlog and the age of its oldest pending row
-- (webhook.endpoint_backlog: the queue's tables and the rows after the
-- partitions' ticks, not the delivered history), and how many of its keys
-- are held by a failing event (webhook.holds).
SELECT e.name,
       CASE WHEN NOT e.enabled THEN 'disabled' WHEN e.paused_at IS NOT NULL THEN 'paused' ELSE 'running' END AS state,
       e.paused_at,
       e.paused_by,
       e.failing_since,
       e.last_probe_at,
       m.delivered,
       m.failed,
       b.pending,
       b.in_flight,
       b.dead,
       extract(epoch FROM now() - b.oldest_pending_at)::float8 AS oldest_pending_seconds,
       (SELECT count(*) FROM webhook.holds h WHERE h.endpoint_id = e.endpoint_id) AS held_keys
  FROM webhook.endpoints e
 CROSS JOIN LATERAL (
        SELECT array_agg(coalesce(c.delivered, 0) ORDER BY g.minute) AS delivered,
               array_agg(coalesce(c.failed, 0) ORDER BY g.minute) AS failed
          FROM generate_series(date_trunc('minute', now()) - make_interval(mins => $1::int - 1),
                               date_trunc('minute', now()), interval '1 minute') AS g(minute)
          LEFT JOIN webhook.endpoint_minutes c
                 ON c.endpoint_id = e.endpoint_id AND c.minute = g.minute) m
 CROSS JOIN LATERAL webhook.endpoint_backlog(e.endpoint_id) b
 ORDER BY e.name
