-- The status page (GET /): per endpoint its state, its attempts of each of
-- the last $1 minutes (oldest minute first; a success is an attempt without
-- error), its backlog and the age of its oldest pending row. The attempts
-- come through attempts_started (a range of the last minutes), the backlog
-- through outbox_queue.
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
       extract(epoch FROM now() - b.oldest_pending_at)::float8 AS oldest_pending_seconds
  FROM webhook.endpoints e
 CROSS JOIN LATERAL (
        SELECT array_agg(coalesce(a.delivered, 0) ORDER BY g.minute) AS delivered,
               array_agg(coalesce(a.failed, 0) ORDER BY g.minute) AS failed
          FROM generate_series(1, $1::int) AS g(minute)
          LEFT JOIN (
                SELECT $1::int - floor(extract(epoch FROM now() - a.started_at) / 60)::int AS minute,
                       count(*) FILTER (WHERE a.error IS NULL)::int AS delivered,
                       count(*) FILTER (WHERE a.error IS NOT NULL)::int AS failed
                  FROM webhook.attempts a
                  JOIN webhook.outbox o ON o.id = a.outbox_id
                 WHERE a.started_at > now() - make_interval(mins => $1::int)
                   AND o.endpoint_id = e.endpoint_id
                 GROUP BY 1) a ON a.minute = g.minute) m
 CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE o.status = 'pending') AS pending,
               count(*) FILTER (WHERE o.status = 'in_flight') AS in_flight,
               count(*) FILTER (WHERE o.status = 'dead') AS dead,
               min(o.created_at) FILTER (WHERE o.status = 'pending') AS oldest_pending_at
          FROM webhook.outbox o
         WHERE o.endpoint_id = e.endpoint_id
           AND o.status IN ('pending', 'in_flight', 'dead')) b
 ORDER BY e.name
