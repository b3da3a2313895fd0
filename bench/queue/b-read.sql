-- Prototype B's read: endpoint $1's events of the transactions that
-- committed between the previous tick and this one, of the partitions $5
-- this relay owns, in id order, at most $6. The previous tick is given as
-- its xmax ($2: transactions from there on began after it) and its list of
-- transactions then in progress ($3); this tick is this statement's own
-- snapshot ($4 NULL; the benchmark passes one), returned with the rows (and
-- alone when there is none). A transaction still in progress is in this
-- tick's list and is read at the next one: it holds back nothing else.
-- Rows already written back (after a take-over) are skipped. Each arm of
-- the OR names the endpoint and both bounds, so that each is a range of
-- outbox_endpoint_xid (a BitmapOr); with the bounds outside the OR, the
-- planner walked the primary key and filtered, a read that grew with the
-- table.
SELECT s.cur::text AS tick, o.id, o.event_id, o.ordering_key, o.payload, o.ctid
  FROM (SELECT coalesce($4::text::pg_snapshot, pg_current_snapshot()) AS cur) s
  LEFT JOIN LATERAL (
        SELECT o.id, o.event_id, o.ordering_key, o.payload::text AS payload, o.ctid::text AS ctid
          FROM webhook.outbox o
         WHERE ((o.endpoint_id = $1 AND o.xid >= $2::xid8 AND o.xid < pg_snapshot_xmax(s.cur))
                OR (o.endpoint_id = $1 AND o.xid = ANY ($3::xid8[])))
           AND pg_visible_in_snapshot(o.xid, s.cur)
           AND o.status = 'pending'
           AND o.attempts = 0
           AND (hashtext(coalesce(o.ordering_key, o.event_id)) & 15) = ANY ($5::int[])
         ORDER BY o.id
         LIMIT $6) o ON true
