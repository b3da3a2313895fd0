-- Prototype B: the outbox as an append-only log, read in commit order by
-- snapshot ticks (after Skytools PgQ). The writer's row carries the id of its
-- transaction; the outbox keeps only the indexes that reads by id need; the
-- queue state lives in small tables of its own, written per batch or only
-- when something fails.
ALTER TABLE webhook.outbox ADD COLUMN xid xid8 NOT NULL DEFAULT pg_current_xact_id();
DROP INDEX webhook.outbox_queue, webhook.outbox_endpoint_created, webhook.outbox_delivered_at;
-- The reader's index (PgQ's, with the endpoint first): an endpoint's rows
-- of the transactions that committed between two ticks are a range of
-- transaction ids (those that began after the older tick) plus the few that
-- were in progress at it.
CREATE INDEX outbox_endpoint_xid ON webhook.outbox (endpoint_id, xid);
-- An attempt row names its outbox row without a foreign key: the check is a
-- look-up and a row lock on the outbox row per attempt. Retention removes
-- both together.
ALTER TABLE webhook.attempts DROP CONSTRAINT attempts_outbox_id_fkey;

-- Keys hash into 16 partitions per endpoint; a relay owns a partition under
-- a lease, as a Kafka consumer owns a partition of its group. `tick` is the
-- partition's cursor: every row of the partition visible in that snapshot
-- is delivered, dead, held or parked.
CREATE TABLE webhook.partitions (
    endpoint_id      integer NOT NULL,
    partition        integer NOT NULL,
    owner            text,
    lease_expires_at timestamptz,
    tick             pg_snapshot NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (endpoint_id, partition)
) WITH (fillfactor = 50);
-- A key whose head event failed and waits for its retry: the only rows the
-- relay writes for a failure besides the outcome and the attempt.
CREATE TABLE webhook.held_keys (
    endpoint_id     integer NOT NULL,
    ordering_key    text    NOT NULL,
    outbox_id       bigint  NOT NULL,
    next_attempt_at timestamptz NOT NULL,
    held_since      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (endpoint_id, ordering_key)
);
-- Events read while their key was held, in the order they will go.
CREATE TABLE webhook.parked (
    endpoint_id  integer NOT NULL,
    ordering_key text    NOT NULL,
    outbox_id    bigint  NOT NULL,
    PRIMARY KEY (endpoint_id, ordering_key, outbox_id)
);

INSERT INTO webhook.partitions (endpoint_id, partition, owner, lease_expires_at, tick)
SELECT 1, p, 'bench', now() + interval '1 day', pg_current_snapshot() FROM generate_series(0, 15) p;
