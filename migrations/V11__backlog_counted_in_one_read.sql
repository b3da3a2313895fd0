-- webhook.endpoint_backlog (V10) counted what is still to deliver through
-- webhook.unsettled(): a UNION of the ids in the log's range and in the
-- queue's small tables (a hash of every id, for the duplicates), then each
-- id looked up again in webhook.outbox by its primary key. Over a backlog
-- of a million pending rows that took 7 s of the database's time, and
-- /metrics samples it every 10 s. This version reads the range once and
-- takes each row's times from that read; only the rows of the queue's own
-- tables (held heads, parked events, redeliveries: few) are looked up by
-- id, and the range skips them by an anti-join. The same counts and times
-- as V10's, in 0.6 s for that backlog. webhook.unsettled() stays for DBAs.
--
-- Locks: none (CREATE OR REPLACE FUNCTION).

CREATE OR REPLACE FUNCTION webhook.endpoint_backlog(endpoint_id integer)
RETURNS TABLE (pending bigint, due bigint, in_flight bigint, dead bigint, oldest_pending_at timestamptz,
               next_attempt_at timestamptz, oldest_due_at timestamptz)
LANGUAGE sql
STABLE
AS $$
    WITH queued AS MATERIALIZED (
        SELECT q.id, bool_or(q.parked) AS parked, min(q.held_due) AS held_due,
               min(q.redelivery_due) AS redelivery_due
          FROM (SELECT h.outbox_id AS id, false AS parked, h.next_attempt_at AS held_due,
                       NULL::timestamptz AS redelivery_due
                  FROM webhook.holds h WHERE h.endpoint_id = endpoint_backlog.endpoint_id
                UNION ALL
                SELECT k.outbox_id, true, NULL, NULL
                  FROM webhook.parked k WHERE k.endpoint_id = endpoint_backlog.endpoint_id
                UNION ALL
                SELECT r.outbox_id, false, NULL, r.next_attempt_at
                  FROM webhook.redeliveries r WHERE r.endpoint_id = endpoint_backlog.endpoint_id) q
         GROUP BY q.id
    ), w AS (
        SELECT o.created_at, o.next_attempt_at AS due_at
          FROM webhook.outbox o
         WHERE o.endpoint_id = endpoint_backlog.endpoint_id
           AND o.xid >= coalesce((SELECT min(pg_snapshot_xmin(p.tick))
                                    FROM webhook.partitions p
                                   WHERE p.endpoint_id = endpoint_backlog.endpoint_id), '1'::xid8)
           AND o.xid < pg_snapshot_xmax(pg_current_snapshot())
           AND o.status = 'pending'
           AND NOT EXISTS (SELECT 1 FROM queued q WHERE q.id = o.id)
        UNION ALL
        SELECT o.created_at,
               CASE WHEN NOT q.parked THEN coalesce(q.held_due, q.redelivery_due, o.next_attempt_at) END
          FROM queued q
          JOIN webhook.outbox o ON o.id = q.id AND o.status = 'pending'
    )
    SELECT count(*),
           count(*) FILTER (WHERE w.due_at <= now()),
           (SELECT coalesce(sum(p.in_flight), 0)
              FROM webhook.partitions p
             WHERE p.endpoint_id = endpoint_backlog.endpoint_id AND p.lease_expires_at > now()),
           (SELECT count(*) FROM webhook.dead_rows d WHERE d.endpoint_id = endpoint_backlog.endpoint_id),
           min(w.created_at),
           min(w.due_at),
           min(w.due_at) FILTER (WHERE w.due_at <= now())
      FROM w
$$;
