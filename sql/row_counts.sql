-- For /metrics: rows waiting, in flight and dead per endpoint, and how overdue
-- the most overdue pending row is. Delivered rows are not counted here (that
-- would scan the whole history); the deliveries counter covers them.
SELECT e.name,
       (SELECT count(*) FROM webhook.outbox o WHERE o.endpoint_id = e.endpoint_id AND o.status = 'pending') AS pending,
       (SELECT count(*) FROM webhook.outbox o WHERE o.endpoint_id = e.endpoint_id AND o.status = 'in_flight') AS in_flight,
       (SELECT count(*) FROM webhook.outbox o WHERE o.endpoint_id = e.endpoint_id AND o.status = 'dead') AS dead,
       coalesce(extract(epoch FROM now() - (
            SELECT min(o.next_attempt_at) FROM webhook.outbox o
             WHERE o.endpoint_id = e.endpoint_id AND o.status = 'pending' AND o.next_attempt_at <= now()
       )), 0)::float8 AS oldest_pending_seconds
  FROM webhook.endpoints e
 WHERE e.name = ANY ($1::text[])
