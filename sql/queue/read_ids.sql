-- The ids of a tick too big for one page (sql/queue/read.sql found a full
-- page): the same rows, ids only, after $7, at most $6, in id order, for
-- tick $4. The rows themselves are then read a page at a time by
-- sql/queue/read_rows.sql, so the tick's index range is walked once, not
-- once per page. The two arms as in sql/queue/read.sql. One row, the ids
-- in an array (NULL for none): a million rows each a message of their own
-- cost the relay 150 MB while it decoded them, the array 12 MB.
SELECT array_agg(t.id)
  FROM (
SELECT o.id
  FROM (SELECT o.id, o.event_id, o.ordering_key, o.xid, o.status, o.attempts, o.replayed_at
          FROM webhook.outbox o
         WHERE o.endpoint_id = $1
           AND o.xid >= $2::text::xid8
           AND o.xid < pg_snapshot_xmax($4::text::pg_snapshot)
        UNION ALL
        SELECT o.id, o.event_id, o.ordering_key, o.xid, o.status, o.attempts, o.replayed_at
          FROM unnest($3::text[]::xid8[]) AS x(xid)
         CROSS JOIN LATERAL (
                SELECT * FROM webhook.outbox o WHERE o.endpoint_id = $1 AND o.xid = x.xid OFFSET 0) o) o
 WHERE pg_visible_in_snapshot(o.xid, $4::text::pg_snapshot)
   AND o.status = 'pending'
   AND o.attempts = 0
   AND o.replayed_at IS NULL
   AND o.id + 0 > $7  -- never an index condition: outbox_endpoint_xid is the path
   AND (hashtext(coalesce(o.ordering_key, o.event_id)) & $8) = ANY ($5::int[])
 ORDER BY o.id
 LIMIT $6) t
