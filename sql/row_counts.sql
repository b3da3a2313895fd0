-- For /metrics: rows waiting, in flight and dead per endpoint, and how overdue
-- the most overdue pending row is, from webhook.endpoint_backlog
-- (migrations/V10__queue_repairs_and_views.sql): the queue's own tables and
-- the rows after the partitions' ticks, never the delivered history (the
-- deliveries counter covers that).
SELECT e.name,
       b.pending,
       b.in_flight,
       b.dead,
       coalesce(extract(epoch FROM now() - b.oldest_due_at), 0)::float8 AS oldest_pending_seconds
  FROM webhook.endpoints e
 CROSS JOIN LATERAL webhook.endpoint_backlog(e.endpoint_id) b
 WHERE e.name = ANY ($1::text[])
