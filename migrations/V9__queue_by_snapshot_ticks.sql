-- The queue read in commit order (docs/queue.md). The outbox becomes a log
-- that writers append to and the relay updates once per attempt with its
-- outcome; nothing claims a row. A relay reads, for the partitions of an
-- endpoint's keys it owns, the rows of the transactions that committed
-- between two snapshots of the transaction ids (its ticks), keeps each
-- key's events in order in memory and sends one per key at a time. What the
-- queue must remember besides the row (who owns which keys, where each
-- partition's reading stands, which keys wait for a retry and what waits
-- behind them) lives in the small tables below, written per batch or only
-- when something fails.
--
-- Locks: ADD COLUMN without a default, SET DEFAULT, SET (fillfactor) and
-- DROP INDEX take ACCESS EXCLUSIVE on webhook.outbox for a moment each;
-- CREATE INDEX outbox_endpoint_xid holds SHARE (writers wait, readers do not)
-- while it reads the table; the UPDATE of the unsettled rows locks those rows
-- (docs/deployment.md). Stop the old relays first: they would claim rows the
-- new ones read.

-- The inserting transaction's id on every new row. Rows written before this
-- migration keep NULL, except the unsettled ones (below): the reader never
-- looks at the settled history.
ALTER TABLE webhook.outbox ADD COLUMN xid xid8;
ALTER TABLE webhook.outbox ALTER COLUMN xid SET DEFAULT pg_current_xact_id();
-- When a DBA last replayed the row (webhook.replay): a replayed row is sent
-- outside its key's order, from webhook.redeliveries, never by the reader.
ALTER TABLE webhook.outbox ADD COLUMN replayed_at timestamptz;
-- Room on every page for each row's outcome version, so that the write-back
-- is a HOT update (no index entry): no indexed column changes in it. Applies
-- to new pages; the table is not rewritten.
ALTER TABLE webhook.outbox SET (fillfactor = 45);

-- Skytools PgQ's index on the transaction id, with the endpoint first: an
-- endpoint's rows of the transactions that committed between two ticks are a
-- range of it (those that began after the older tick) plus a probe for each
-- transaction that was in progress at it.
CREATE INDEX outbox_endpoint_xid ON webhook.outbox (endpoint_id, xid);

-- Three indexes fewer for every writer: the claim's queue (nothing claims),
-- the per-endpoint history by time and delivered rows by time (the status
-- API and retention walk the primary key instead).
DROP INDEX webhook.outbox_queue, webhook.outbox_endpoint_created, webhook.outbox_delivered_at;

-- An attempt names its outbox row without a foreign key, which made every
-- attempt look up and lock its row; retention deletes both together.
ALTER TABLE webhook.attempts DROP CONSTRAINT attempts_outbox_id_fkey;

-- The wake-up switch (docs/wakeup.md) moves onto the endpoint's own row,
-- which webhook.enqueue reads anyway to route the event: arming is a HOT
-- update of that row, and the writer opens one table fewer.
ALTER TABLE webhook.endpoints ADD COLUMN armed boolean NOT NULL DEFAULT true;
DROP TABLE webhook.wakeup;

-- How each endpoint's keys are shared among relays: a key belongs to
-- partition hashtext(coalesce(ordering_key, event_id)) & (partitions - 1).
ALTER TABLE webhook.endpoints ADD COLUMN partitions integer NOT NULL DEFAULT 16
    CHECK (partitions > 0 AND partitions & (partitions - 1) = 0);

-- A partition is owned by one relay at a time under a lease, as a Kafka
-- consumer owns a partition of its group. `tick` is its cursor: every row of
-- the partition whose transaction is visible in that snapshot is delivered,
-- dead, held (webhook.holds), parked (webhook.parked) or being sent
-- again from webhook.redeliveries. A new partition's tick, '1:1:', sees no
-- transaction: its first read takes every unsettled row. `in_flight` is
-- what its owner reported sending at its last cursor write.
CREATE TABLE webhook.partitions (
    endpoint_id      integer     NOT NULL,
    partition        integer     NOT NULL,
    owner            text,
    lease_expires_at timestamptz,
    epoch            bigint      NOT NULL DEFAULT 0,
    tick             pg_snapshot NOT NULL DEFAULT '1:1:',
    in_flight        integer     NOT NULL DEFAULT 0,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (endpoint_id, partition)
) WITH (fillfactor = 50);

-- Relays alive, by their latest heartbeat: each takes its fair share of an
-- endpoint's partitions.
CREATE TABLE webhook.relays (
    name    text        PRIMARY KEY,
    seen_at timestamptz NOT NULL DEFAULT now()
);

-- A key whose head event failed and waits for its retry: the key is held by
-- that event, and the key's later events wait (parked) until it is
-- delivered or dead.
CREATE TABLE webhook.holds (
    endpoint_id     integer     NOT NULL,
    ordering_key    text        NOT NULL,
    outbox_id       bigint      NOT NULL,
    next_attempt_at timestamptz NOT NULL,
    held_since      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (endpoint_id, ordering_key)
);
CREATE INDEX holds_due ON webhook.holds (endpoint_id, next_attempt_at);

-- Events read while their key was held, in the order they go once it moves.
CREATE TABLE webhook.parked (
    endpoint_id  integer NOT NULL,
    ordering_key text    NOT NULL,
    outbox_id    bigint  NOT NULL,
    PRIMARY KEY (endpoint_id, ordering_key, outbox_id)
);

-- Events sent outside any key's order: rows a DBA replayed, and the retries
-- of events that have no order to keep (no ordering_key, or an endpoint with
-- ordering = "none").
CREATE TABLE webhook.redeliveries (
    outbox_id       bigint      PRIMARY KEY,
    endpoint_id     integer     NOT NULL,
    next_attempt_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX redeliveries_due ON webhook.redeliveries (endpoint_id, next_attempt_at);

-- Dead rows, so that finding them needs no outbox index every writer pays for.
CREATE TABLE webhook.dead_rows (
    outbox_id   bigint      PRIMARY KEY,
    endpoint_id integer     NOT NULL,
    died_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_rows_endpoint ON webhook.dead_rows (endpoint_id, outbox_id);
INSERT INTO webhook.dead_rows (outbox_id, endpoint_id)
SELECT id, endpoint_id FROM webhook.outbox WHERE status = 'dead';

-- The rows still to deliver (pending, or in flight under an old relay's
-- claim) join the log as written by this transaction: the first read of
-- every partition takes them. An in-flight claim counted an attempt; the
-- row is pending again with that count.
UPDATE webhook.outbox
   SET xid = pg_current_xact_id(),
       status = 'pending',
       next_attempt_at = CASE WHEN status = 'in_flight' THEN now() ELSE next_attempt_at END,
       lease_expires_at = NULL,
       claimed_by = NULL
 WHERE status IN ('pending', 'in_flight');

-- A row already attempted keeps its place: for a key, the oldest unsettled
-- row holds the key (due at its next_attempt_at) when any of the key's
-- unsettled rows has been attempted, and the key's other unsettled rows wait
-- behind it, parked. Unsettled rows without a key that were attempted wait
-- for their retry in webhook.redeliveries. Everything else is read as new.
WITH attempted_keys AS (
    SELECT DISTINCT endpoint_id, ordering_key
      FROM webhook.outbox
     WHERE status = 'pending' AND attempts > 0 AND ordering_key IS NOT NULL
), unsettled AS (
    SELECT o.id, o.endpoint_id, o.ordering_key, o.next_attempt_at,
           row_number() OVER (PARTITION BY o.endpoint_id, o.ordering_key ORDER BY o.id) AS n
      FROM webhook.outbox o
      JOIN attempted_keys k USING (endpoint_id, ordering_key)
     WHERE o.status = 'pending'
), held AS (
    INSERT INTO webhook.holds (endpoint_id, ordering_key, outbox_id, next_attempt_at)
    SELECT endpoint_id, ordering_key, id, next_attempt_at FROM unsettled WHERE n = 1
)
INSERT INTO webhook.parked (endpoint_id, ordering_key, outbox_id)
SELECT endpoint_id, ordering_key, id FROM unsettled WHERE n > 1;

INSERT INTO webhook.redeliveries (outbox_id, endpoint_id, next_attempt_at)
SELECT id, endpoint_id, next_attempt_at
  FROM webhook.outbox
 WHERE status = 'pending' AND attempts > 0 AND ordering_key IS NULL;

-- Every endpoint's partitions, free, with a tick that sees nothing yet.
INSERT INTO webhook.partitions (endpoint_id, partition)
SELECT e.endpoint_id, p
  FROM webhook.endpoints e, generate_series(0, e.partitions - 1) AS p;

-- Event ids without a cryptographic random source: unique is what they need
-- (they are sent in the clear as webhook-id, covered by the signature), not
-- unguessable. The same shape as V5's: 12 hex digits of Unix milliseconds,
-- then 80 bits from random(), the session's generator (seeded from the strong
-- source when the session starts).
CREATE OR REPLACE FUNCTION webhook.new_event_id()
RETURNS text
LANGUAGE sql
VOLATILE
AS $$
    SELECT 'evt_'
        || lpad(to_hex((date_part('epoch', clock_timestamp()) * 1000)::bigint), 12, '0')
        || lpad(to_hex(floor(random() * 1099511627776)::bigint), 10, '0')
        || lpad(to_hex(floor(random() * 1099511627776)::bigint), 10, '0')
$$;

-- Sends the wake-up and says so; used inside the enqueue's one statement.
-- Postgres folds a transaction's repeated notifications into one.
CREATE FUNCTION webhook.wake()
RETURNS boolean
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM pg_notify('webhook_outbox', '');
    RETURN true;
END;
$$;

-- One statement for every case: the transaction takes its id first, so the
-- switches are read with a snapshot younger than it (the wake-up's race,
-- docs/wakeup.md), and the insert reads them on the rows it routes by.
CREATE OR REPLACE FUNCTION webhook.enqueue(event_code text, payload jsonb, ordering_key text DEFAULT NULL,
                                           event_id text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    new_event_id text := coalesce(enqueue.event_id, webhook.new_event_id());
    written integer;
BEGIN
    IF event_code IS NULL OR payload IS NULL THEN
        RAISE EXCEPTION 'webhook.enqueue: event_code and payload must not be NULL';
    END IF;
    IF pg_current_xact_id_if_assigned() IS NULL THEN
        PERFORM pg_current_xact_id();
    END IF;
    INSERT INTO webhook.outbox (event_id, event_code, payload, ordering_key, endpoint_id)
    SELECT new_event_id, enqueue.event_code, enqueue.payload, enqueue.ordering_key, e.endpoint_id
      FROM webhook.endpoints e
     WHERE e.enabled
       AND enqueue.event_code = ANY (e.events)
       AND (NOT e.armed OR webhook.wake());
    GET DIAGNOSTICS written = ROW_COUNT;
    IF written = 0 THEN
        RETURN NULL;
    END IF;
    RETURN new_event_id;
END;
$$;
