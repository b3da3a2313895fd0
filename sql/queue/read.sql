-- Read endpoint $1's log: the rows of the transactions that committed after
-- the previous tick and by this one, of the partitions $5 this relay owns
-- ($8: the endpoint's partition mask), in id order, with ids after $7, at
-- most $6. The previous tick is given as its xmax ($2: transactions from
-- there on began after it) and its list of transactions then in progress
-- ($3); this tick is this statement's own snapshot, or $4 when given (the
-- pages of one tick, a catch-up to another partition's tick), and is
-- returned with the rows (alone when there is none). A transaction still in
-- progress is in this tick's list and is read at a later one: it holds back
-- nothing else (docs/queue.md).
--
-- The two arms of the UNION ALL (disjoint: one is above the previous tick's
-- xmax, the other below it) each name the endpoint and their xid bounds, so
-- each is a range of outbox_endpoint_xid, or one probe of it per
-- transaction in the list (a lateral join, its OFFSET 0 keeping the planner
-- from turning it back into a scan of the endpoint), in any plan, the
-- cached generic one included (written as one OR, the generic plan kept only
-- endpoint_id as the index condition and filtered the endpoint's whole
-- history by xid). Rows already written back (after a
-- take-over: delivered, dead, held, retried) and replayed rows (sent from
-- webhook.redeliveries) are skipped. `paused` is the endpoint's pause (by
-- the breaker or by hand), so that every relay stops sending at its next read.
-- The payload and ctid are turned into text, and the partition computed,
-- after the LIMIT: a tick of a million rows otherwise paid for each of them
-- (2.2 s for a page of 500 where 0.95 s is the scan and sort).
SELECT s.cur::text AS tick, o.id, o.event_id, o.ordering_key, o.payload::text AS payload, o.ctid::text AS ctid,
       hashtext(coalesce(o.ordering_key, o.event_id)) & $8 AS part, s.paused
  FROM (SELECT coalesce($4::text::pg_snapshot, pg_current_snapshot()) AS cur,
               (SELECT e.paused_at IS NOT NULL FROM webhook.endpoints e WHERE e.endpoint_id = $1) AS paused) s
  LEFT JOIN LATERAL (
        SELECT o.id, o.event_id, o.ordering_key, o.payload, o.ctid
          FROM (SELECT o.id, o.event_id, o.ordering_key, o.payload, o.ctid, o.xid, o.status, o.attempts,
                       o.replayed_at
                  FROM webhook.outbox o
                 WHERE o.endpoint_id = $1
                   AND o.xid >= $2::text::xid8
                   AND o.xid < pg_snapshot_xmax(s.cur)
                UNION ALL
                SELECT o.id, o.event_id, o.ordering_key, o.payload, o.ctid, o.xid, o.status, o.attempts,
                       o.replayed_at
                  FROM unnest($3::text[]::xid8[]) AS x(xid)
                 CROSS JOIN LATERAL (
                        SELECT o.*, o.ctid FROM webhook.outbox o WHERE o.endpoint_id = $1 AND o.xid = x.xid OFFSET 0) o) o
         WHERE pg_visible_in_snapshot(o.xid, s.cur)
           AND o.status = 'pending'
           AND o.attempts = 0
           AND o.replayed_at IS NULL
           AND o.id + 0 > $7  -- never an index condition: outbox_endpoint_xid is the path
           AND (hashtext(coalesce(o.ordering_key, o.event_id)) & $8) = ANY ($5::int[])
         ORDER BY o.id
         LIMIT $6) o ON true
