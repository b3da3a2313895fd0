-- The relay takes back, a hundred at a time, the events that wait in the
-- queue's own tables: a held key's parked events in id order
-- (sql/queue/parked_fetch.sql), the held heads whose retry is due and the due
-- redeliveries, soonest first (holds_due.sql, redeliveries_due.sql). On the
-- relay's queue connections, which plan with index scans off (bitmap scans
-- of the log's index, TID scans for write-backs, src/db.rs), each of those
-- statements could only be a bitmap scan of every waiting row, each joined
-- to its outbox row and sorted, for a hundred of them: 15,000 buffers and
-- 13 ms with 5,000 waiting, so taking back n of them cost time in n squared
-- (10,000 events of one key: 100 fetches, 1.3 s of the database; after a
-- receiver outage, every held key of the endpoint at once). As functions
-- with their own planner settings they walk their index in order and stop
-- after a hundred: about 330 buffers whatever the number waiting
-- (tests/it/schema.rs).
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

-- Held heads of an endpoint whose retry is due (all of them, due or not,
-- for a probe), of the partitions `parts`, except keys whose head is in
-- flight, at most `most`, soonest first.
CREATE FUNCTION webhook.holds_due(endpoint_id integer, parts integer[], mask integer, in_flight text[],
                                  most bigint, probe boolean)
RETURNS TABLE (ordering_key text, id bigint, event_id text, attempts integer, payload text, version text,
               part integer)
LANGUAGE sql
STABLE
SET enable_seqscan = off
SET enable_bitmapscan = off
SET enable_indexscan = on
AS $$
    SELECT h.ordering_key, o.id, o.event_id, o.attempts, o.payload::text, o.ctid::text,
           hashtext(h.ordering_key) & holds_due.mask
      FROM webhook.holds h
      JOIN webhook.outbox o ON o.id = h.outbox_id
     WHERE h.endpoint_id = holds_due.endpoint_id
       AND (h.next_attempt_at <= now() OR holds_due.probe)
       AND (hashtext(h.ordering_key) & holds_due.mask) = ANY (holds_due.parts)
       AND h.ordering_key <> ALL (holds_due.in_flight)
       AND o.status = 'pending'
     ORDER BY h.next_attempt_at
     LIMIT holds_due.most
$$;

-- Redeliveries of an endpoint that are due (replayed rows; retries of
-- unordered events), of the partitions `parts`, except those in flight, at
-- most `most`, soonest first.
CREATE FUNCTION webhook.redeliveries_due(endpoint_id integer, parts integer[], mask integer,
                                         in_flight bigint[], most bigint)
RETURNS TABLE (id bigint, event_id text, ordering_key text, attempts integer, payload text, version text,
               part integer)
LANGUAGE sql
STABLE
SET enable_seqscan = off
SET enable_bitmapscan = off
SET enable_indexscan = on
AS $$
    SELECT o.id, o.event_id, o.ordering_key, o.attempts, o.payload::text, o.ctid::text,
           hashtext(coalesce(o.ordering_key, o.event_id)) & redeliveries_due.mask
      FROM webhook.redeliveries r
      JOIN webhook.outbox o ON o.id = r.outbox_id
     WHERE r.endpoint_id = redeliveries_due.endpoint_id
       AND r.next_attempt_at <= now()
       AND r.outbox_id <> ALL (redeliveries_due.in_flight)
       AND (hashtext(coalesce(o.ordering_key, o.event_id)) & redeliveries_due.mask)
           = ANY (redeliveries_due.parts)
       AND o.status = 'pending'
     ORDER BY r.next_attempt_at
     LIMIT redeliveries_due.most
$$;
