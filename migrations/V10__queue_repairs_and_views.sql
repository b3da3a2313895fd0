-- The DBA's functions and views on the queue read by snapshot ticks (V9,
-- docs/queue.md, docs/dba.md). V9 dropped the outbox indexes that V2's
-- replay, purge and backlog read (outbox_queue, outbox_endpoint_created,
-- outbox_delivered_at) and the relay no longer writes 'in_flight' on a row:
-- what is still to deliver is found through the queue's own small tables
-- (webhook.holds, webhook.parked, webhook.redeliveries) and the rows after
-- the partitions' ticks (a range of outbox_endpoint_xid), dead rows through
-- webhook.dead_rows. Signatures, rules and return values stay V2's.
--
-- Locks: none on webhook.outbox beyond a moment's ACCESS EXCLUSIVE on the
-- status domain's catalog entry (the new constraint is NOT VALID: no row is
-- read); CREATE OR REPLACE of functions and views takes no table lock.

-- ---------------------------------------------------------------------------
-- 'in_flight' is no longer a row's status: an attempt in progress lives only
-- in the relay's memory (webhook.partitions.in_flight counts them). V9 set
-- every in-flight row back to pending; from here on writing 'in_flight' is
-- refused, so a relay of an older version that was not stopped before the
-- upgrade fails at its first claim instead of claiming rows beside the new
-- relays. NOT VALID: the rows are not read again (V9 left none in flight).
ALTER DOMAIN webhook.delivery_status DROP CONSTRAINT delivery_status_check;
ALTER DOMAIN webhook.delivery_status
    ADD CONSTRAINT delivery_status_check CHECK (VALUE IN ('pending', 'delivered', 'dead')) NOT VALID;

-- ---------------------------------------------------------------------------
-- The ids of endpoint `endpoint_id`'s rows that are still to deliver, read
-- without the delivered history: its pending rows not yet past every
-- partition's cursor (a range of outbox_endpoint_xid from the oldest tick's
-- xmin), and the rows past it that wait in the queue's tables (a held key's
-- head, the events parked behind it, redeliveries). A partition that no
-- relay has read yet ('1:1:') makes the range the endpoint's whole log since
-- V9. The range's upper end excludes nothing this statement can see, but
-- lets the planner estimate the range as one (0.5 %), not as a third of the
-- table, which made plans costly enough for JIT to compile them. A single
-- SELECT: Postgres inlines it where it is called.
CREATE FUNCTION webhook.unsettled(endpoint_id integer)
RETURNS TABLE (outbox_id bigint)
LANGUAGE sql
STABLE
AS $$
    SELECT o.id
      FROM webhook.outbox o
     WHERE o.endpoint_id = unsettled.endpoint_id
       AND o.xid >= coalesce((SELECT min(pg_snapshot_xmin(p.tick))
                                FROM webhook.partitions p
                               WHERE p.endpoint_id = unsettled.endpoint_id), '1'::xid8)
       AND o.xid < pg_snapshot_xmax(pg_current_snapshot())
       AND o.status = 'pending'
    UNION
    SELECT h.outbox_id FROM webhook.holds h WHERE h.endpoint_id = unsettled.endpoint_id
    UNION
    SELECT k.outbox_id FROM webhook.parked k WHERE k.endpoint_id = unsettled.endpoint_id
    UNION
    SELECT r.outbox_id FROM webhook.redeliveries r WHERE r.endpoint_id = unsettled.endpoint_id
$$;

-- What endpoint `endpoint_id` has waiting, for webhook.backlog, /metrics,
-- the status page and `outbox-relay status`. A row's due time is the one
-- the relay obeys: a held head's webhook.holds.next_attempt_at, a
-- redelivery's webhook.redeliveries.next_attempt_at, else the row's own; a
-- parked row has none (it waits for its key's head, not for a time).
-- in_flight is what the owners of the endpoint's partitions reported at
-- their last cursor write, over the partitions whose lease is current.
CREATE FUNCTION webhook.endpoint_backlog(endpoint_id integer)
RETURNS TABLE (pending bigint, due bigint, in_flight bigint, dead bigint, oldest_pending_at timestamptz,
               next_attempt_at timestamptz, oldest_due_at timestamptz)
LANGUAGE sql
STABLE
AS $$
    SELECT count(*),
           count(*) FILTER (WHERE w.due_at <= now()),
           (SELECT coalesce(sum(p.in_flight), 0)
              FROM webhook.partitions p
             WHERE p.endpoint_id = endpoint_backlog.endpoint_id AND p.lease_expires_at > now()),
           (SELECT count(*) FROM webhook.dead_rows d WHERE d.endpoint_id = endpoint_backlog.endpoint_id),
           min(w.created_at),
           min(w.due_at),
           min(w.due_at) FILTER (WHERE w.due_at <= now())
      FROM (SELECT o.created_at,
                   CASE WHEN k.outbox_id IS NULL
                        THEN coalesce(h.next_attempt_at, r.next_attempt_at, o.next_attempt_at) END AS due_at
              FROM webhook.unsettled(endpoint_backlog.endpoint_id) u
              JOIN webhook.outbox o ON o.id = u.outbox_id AND o.status = 'pending'
              LEFT JOIN webhook.holds h
                     ON h.endpoint_id = o.endpoint_id AND h.ordering_key = o.ordering_key AND h.outbox_id = o.id
              LEFT JOIN webhook.parked k
                     ON k.endpoint_id = o.endpoint_id AND k.ordering_key = o.ordering_key AND k.outbox_id = o.id
              LEFT JOIN webhook.redeliveries r ON r.outbox_id = o.id) w
$$;

-- What is waiting, per endpoint (V2's columns). `due`: pending rows past
-- their due time (above), a growing `due` means the relay is not keeping up
-- (or not running); `pending` minus `due` are retries waiting for their
-- backoff and events parked behind a held key (webhook.held_keys).
CREATE OR REPLACE VIEW webhook.backlog AS
SELECT e.name AS endpoint,
       e.enabled,
       b.pending,
       b.due,
       b.in_flight,
       b.dead,
       b.oldest_pending_at,
       now() - b.oldest_pending_at AS oldest_pending_age,
       b.next_attempt_at
  FROM webhook.endpoints e
 CROSS JOIN LATERAL webhook.endpoint_backlog(e.endpoint_id) b;

-- Keys held by a failing head event: which event holds the key, its attempts
-- and latest error, when the relay tries it again (the time it obeys: change
-- it here to retry sooner or later, effective within poll_interval, at once
-- with `NOTIFY webhook_outbox`), since when the key is held, and how many of
-- the key's later events wait parked behind it.
CREATE VIEW webhook.held_keys AS
SELECT e.name AS endpoint,
       h.ordering_key,
       h.outbox_id,
       o.event_id,
       o.attempts,
       h.next_attempt_at,
       o.last_error,
       h.held_since,
       (SELECT count(*)
          FROM webhook.parked k
         WHERE k.endpoint_id = h.endpoint_id AND k.ordering_key = h.ordering_key) AS parked
  FROM webhook.holds h
  JOIN webhook.endpoints e ON e.endpoint_id = h.endpoint_id
  LEFT JOIN webhook.outbox o ON o.id = h.outbox_id;

-- ---------------------------------------------------------------------------
-- Replay. A dead or delivered row is sent again outside its key's order: it
-- goes back to pending with a fresh budget, is queued in
-- webhook.redeliveries (due now) and leaves webhook.dead_rows; it neither
-- waits for its key's earlier events nor holds back its later ones. A
-- pending row is retried now with a fresh budget and keeps its place: a held
-- head's hold is due now, a redelivery is due now; a pending row that the
-- relay has not attempted (read or not, or parked behind its key) already
-- has its whole budget and is left as it is, so that a relay holding it in
-- memory can still write its outcome. Both change the row only when there is
-- something to change: every new row version fails the write-back fence of
-- an attempt in progress (docs/dba.md: such a row is sent again).

-- The dead rows of endpoint `ep` (NULL: every endpoint) created in [since,
-- until) (NULL: unbounded), through webhook.dead_rows.
CREATE FUNCTION webhook.dead_ids(ep integer, since timestamptz, until timestamptz)
RETURNS bigint[]
LANGUAGE sql
STABLE
AS $$
    SELECT array_agg(o.id ORDER BY o.id)
      FROM webhook.dead_rows d
      JOIN webhook.outbox o ON o.id = d.outbox_id
     WHERE (dead_ids.ep IS NULL OR d.endpoint_id = dead_ids.ep)
       AND o.status = 'dead'
       AND (dead_ids.since IS NULL OR o.created_at >= dead_ids.since)
       AND (dead_ids.until IS NULL OR o.created_at < dead_ids.until)
$$;

-- Rows `ids` whose status is `from_status` ('dead' or 'delivered'): sent
-- again outside their key's order. Returns how many.
CREATE FUNCTION webhook.resend(ids bigint[], from_status text)
RETURNS bigint
LANGUAGE sql
AS $$
    WITH again AS (
        UPDATE webhook.outbox o
           SET status = 'pending',
               attempts = 0,
               next_attempt_at = now(),
               delivered_at = NULL,
               replayed_at = now()
         WHERE o.id = ANY (resend.ids) AND o.status = resend.from_status
        RETURNING o.id, o.endpoint_id
    ), queued AS (
        INSERT INTO webhook.redeliveries AS r (outbox_id, endpoint_id, next_attempt_at)
        SELECT a.id, a.endpoint_id, now() FROM again a
        ON CONFLICT (outbox_id) DO UPDATE SET next_attempt_at = now()
    ), undead AS (
        DELETE FROM webhook.dead_rows d WHERE d.outbox_id IN (SELECT a.id FROM again a)
    )
    SELECT count(*) FROM again
$$;

-- Pending rows `ids`: due now, with a fresh budget where one was spent.
CREATE FUNCTION webhook.retry_now(ids bigint[])
RETURNS void
LANGUAGE sql
AS $$
    WITH held AS (
        UPDATE webhook.holds h
           SET next_attempt_at = now()
          FROM webhook.outbox o
         WHERE o.id = ANY (retry_now.ids) AND o.status = 'pending'
           AND h.endpoint_id = o.endpoint_id AND h.ordering_key = o.ordering_key AND h.outbox_id = o.id
    ), again AS (
        UPDATE webhook.redeliveries r SET next_attempt_at = now() WHERE r.outbox_id = ANY (retry_now.ids)
    )
    UPDATE webhook.outbox o
       SET attempts = 0, next_attempt_at = now()
     WHERE o.id = ANY (retry_now.ids) AND o.status = 'pending' AND o.attempts > 0
$$;

-- Replays one row by id (dead, delivered or pending, as above) and an id
-- that does not exist is refused. Returns 1. Nothing is in flight on a row
-- any more: replaying a row whose attempt is in progress sends it again, and
-- that attempt's outcome is not written on the row (its attempt is kept).
CREATE OR REPLACE FUNCTION webhook.replay(outbox_id bigint, dry_run boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    row_status text;
BEGIN
    SELECT o.status INTO row_status FROM webhook.outbox o WHERE o.id = replay.outbox_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'webhook.replay: no outbox row with id %', outbox_id
              USING ERRCODE = 'no_data_found';
    END IF;
    IF dry_run THEN
        RETURN 1;
    END IF;
    IF row_status = 'pending' THEN
        PERFORM webhook.retry_now(ARRAY[replay.outbox_id]);
    ELSE
        PERFORM webhook.resend(ARRAY[replay.outbox_id], row_status);
    END IF;
    PERFORM pg_notify('webhook_outbox', '');
    RETURN 1;
END;
$$;

-- Replays every row in `status` ('dead' by default; 'delivered' re-sends,
-- 'pending' retries now with a fresh budget), optionally of one endpoint and
-- created in [since, until). Returns how many rows it replayed, or with
-- dry_run how many it would. Dead rows are found through webhook.dead_rows,
-- pending ones through webhook.unsettled; delivered ones by a scan of the
-- outbox (there is no index on status: every writer would pay for it).
CREATE OR REPLACE FUNCTION webhook.replay(endpoint text DEFAULT NULL,
                                          status text DEFAULT 'dead',
                                          since timestamptz DEFAULT NULL,
                                          until timestamptz DEFAULT NULL,
                                          dry_run boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    ep integer;
    ids bigint[];
    n bigint;
BEGIN
    IF replay.status IS NULL OR replay.status NOT IN ('dead', 'delivered', 'pending') THEN
        RAISE EXCEPTION 'webhook.replay: status must be dead, delivered or pending, not %',
              coalesce(quote_literal(replay.status), 'NULL')
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
    ep := webhook.endpoint_id_of(replay.endpoint, 'webhook.replay');

    IF replay.status = 'dead' THEN
        ids := webhook.dead_ids(ep, replay.since, replay.until);
    ELSIF replay.status = 'pending' THEN
        SELECT array_agg(o.id) INTO ids
          FROM webhook.endpoints e
         CROSS JOIN LATERAL webhook.unsettled(e.endpoint_id) u
          JOIN webhook.outbox o ON o.id = u.outbox_id
         WHERE (ep IS NULL OR e.endpoint_id = ep)
           AND o.status = 'pending'
           AND (replay.since IS NULL OR o.created_at >= replay.since)
           AND (replay.until IS NULL OR o.created_at < replay.until);
    ELSE
        SELECT array_agg(o.id) INTO ids
          FROM webhook.outbox o
         WHERE o.status = 'delivered'
           AND (ep IS NULL OR o.endpoint_id = ep)
           AND (replay.since IS NULL OR o.created_at >= replay.since)
           AND (replay.until IS NULL OR o.created_at < replay.until);
    END IF;
    n := coalesce(cardinality(ids), 0);
    IF dry_run OR n = 0 THEN
        RETURN n;
    END IF;

    IF replay.status = 'pending' THEN
        PERFORM webhook.retry_now(ids);
    ELSE
        n := webhook.resend(ids, replay.status);
    END IF;
    PERFORM pg_notify('webhook_outbox', '');
    RETURN n;
END;
$$;

-- ---------------------------------------------------------------------------
-- Purge: dead rows, found through webhook.dead_rows, go with their attempts
-- (webhook.attempts has no foreign key to cascade since V9) and their
-- dead_rows row.

-- Rows `ids` that are dead: removed. Returns how many.
CREATE FUNCTION webhook.purge(ids bigint[])
RETURNS bigint
LANGUAGE sql
AS $$
    WITH gone AS (
        DELETE FROM webhook.outbox o WHERE o.id = ANY (purge.ids) AND o.status = 'dead' RETURNING o.id
    ), history AS (
        DELETE FROM webhook.attempts a WHERE a.outbox_id IN (SELECT g.id FROM gone g)
    ), listed AS (
        DELETE FROM webhook.dead_rows d WHERE d.outbox_id IN (SELECT g.id FROM gone g)
    )
    SELECT count(*) FROM gone
$$;

-- Purges one dead row by id. Refuses a row that is not dead. Returns 1.
CREATE OR REPLACE FUNCTION webhook.purge_dead(outbox_id bigint, dry_run boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    row_status text;
BEGIN
    SELECT o.status INTO row_status FROM webhook.outbox o WHERE o.id = purge_dead.outbox_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'webhook.purge_dead: no outbox row with id %', outbox_id
              USING ERRCODE = 'no_data_found';
    END IF;
    IF row_status <> 'dead' THEN
        RAISE EXCEPTION 'webhook.purge_dead: row % is %, not dead', outbox_id, row_status
              USING ERRCODE = 'object_in_use';
    END IF;
    IF NOT dry_run THEN
        PERFORM webhook.purge(ARRAY[purge_dead.outbox_id]);
    END IF;
    RETURN 1;
END;
$$;

-- Purges every dead row, optionally of one endpoint and created in
-- [since, until). Returns how many rows it removed, or with dry_run would.
CREATE OR REPLACE FUNCTION webhook.purge_dead(endpoint text DEFAULT NULL,
                                              since timestamptz DEFAULT NULL,
                                              until timestamptz DEFAULT NULL,
                                              dry_run boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    ep integer := webhook.endpoint_id_of(purge_dead.endpoint, 'webhook.purge_dead');
    ids bigint[] := webhook.dead_ids(ep, purge_dead.since, purge_dead.until);
BEGIN
    IF dry_run OR ids IS NULL THEN
        RETURN coalesce(cardinality(ids), 0);
    END IF;
    RETURN webhook.purge(ids);
END;
$$;

-- ---------------------------------------------------------------------------
-- Resuming an endpoint (V7) makes what waits out a backoff due now: the
-- holds of its keys and its redeliveries, the due times the relay obeys
-- (through holds_due and redeliveries_due). The outbox rows are left alone:
-- a probe may be in flight on one of them.
CREATE OR REPLACE FUNCTION webhook.resume_endpoint_id(id integer, only_auto boolean DEFAULT false)
RETURNS boolean
LANGUAGE plpgsql
AS $$
BEGIN
    UPDATE webhook.endpoints e
       SET paused_at = NULL, paused_by = NULL, failing_since = NULL, last_probe_at = NULL
     WHERE e.endpoint_id = resume_endpoint_id.id
       AND e.paused_at IS NOT NULL
       AND (NOT only_auto OR e.paused_by = 'auto');
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE webhook.holds h
       SET next_attempt_at = now()
     WHERE h.endpoint_id = resume_endpoint_id.id AND h.next_attempt_at > now();
    UPDATE webhook.redeliveries r
       SET next_attempt_at = now()
     WHERE r.endpoint_id = resume_endpoint_id.id AND r.next_attempt_at > now();
    PERFORM pg_notify('webhook_outbox', '');
    RETURN true;
END;
$$;
