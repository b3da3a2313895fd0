-- Prototype B2's read: b-read.sql, skipping rows that have a final attempt
-- (a probe of attempts_outbox per row) instead of reading the row's status.
SELECT s.cur::text AS tick, o.id, o.event_id, o.ordering_key, o.payload, o.ctid
  FROM (SELECT coalesce($4::text::pg_snapshot, pg_current_snapshot()) AS cur) s
  LEFT JOIN LATERAL (
        SELECT o.id, o.event_id, o.ordering_key, o.payload::text AS payload, o.ctid::text AS ctid
          FROM webhook.outbox o
         WHERE ((o.endpoint_id = $1 AND o.xid >= $2::xid8 AND o.xid < pg_snapshot_xmax(s.cur))
                OR (o.endpoint_id = $1 AND o.xid = ANY ($3::xid8[])))
           AND pg_visible_in_snapshot(o.xid, s.cur)
           AND (hashtext(coalesce(o.ordering_key, o.event_id)) & 15) = ANY ($5::int[])
           AND NOT EXISTS (SELECT 1 FROM webhook.attempts a
                            WHERE a.outbox_id = o.id AND a.outcome IN ('delivered', 'dead'))
         ORDER BY o.id
         LIMIT $6) o ON true
