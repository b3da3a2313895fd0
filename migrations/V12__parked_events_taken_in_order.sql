-- A held key's parked events are taken back a hundred at a time, in id
-- order (sql/queue/parked_fetch.sql). On the relay's queue connections,
-- which plan with index scans off (bitmap scans of the log's index, TID
-- scans for write-backs, src/db.rs), that statement could only be a bitmap
-- scan of every parked row of the key, each joined to its outbox row and
-- sorted, for a hundred of them: 15,000 buffers and 13 ms for a key with
-- 5,000 parked events, so taking back n parked events cost time in n
-- squared (10,000 events of one key: 100 fetches, 1.3 s of the database).
-- As a function with its own planner settings it walks the key's part of
-- parked_pkey in order and stops after a hundred: about 330 buffers
-- whatever the number parked (tests/it/schema.rs).
--
-- Locks: none (CREATE FUNCTION).

CREATE FUNCTION webhook.parked_next(endpoint_id integer, keys text[], after bigint[], per_key bigint,
                                    mask integer)
RETURNS TABLE (ordering_key text, id bigint, event_id text, attempts integer, payload text, version text,
               part integer)
LANGUAGE sql
STABLE
SET enable_seqscan = off
SET enable_bitmapscan = off
SET enable_indexscan = on
AS $$
    SELECT k.ordering_key, o.id, o.event_id, o.attempts, o.payload::text, o.ctid::text,
           hashtext(k.ordering_key) & parked_next.mask
      FROM unnest(parked_next.keys, parked_next.after) AS k(ordering_key, after)
     CROSS JOIN LATERAL (
            SELECT o.id, o.event_id, o.attempts, o.payload, o.ctid
              FROM webhook.parked p
              JOIN webhook.outbox o ON o.id = p.outbox_id
             WHERE p.endpoint_id = parked_next.endpoint_id
               AND p.ordering_key = k.ordering_key
               AND p.outbox_id > k.after
               AND o.status = 'pending'
             ORDER BY p.outbox_id
             LIMIT parked_next.per_key) o
     ORDER BY k.ordering_key, o.id
$$;
