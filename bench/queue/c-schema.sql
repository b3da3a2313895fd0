-- Prototype C: a head row per (endpoint, key) with undelivered events,
-- updated in place. The writer appends its outbox row and upserts its key's
-- head (the first event of a key makes the head, a later one only moves the
-- head's tail: a HOT update); the relay claims heads, not rows, and on each
-- outcome moves the head to the key's next event through a per-key index.
DROP INDEX webhook.outbox_queue, webhook.outbox_endpoint_created, webhook.outbox_delivered_at;
CREATE INDEX outbox_key ON webhook.outbox (endpoint_id, ordering_key, id);
ALTER TABLE webhook.attempts DROP CONSTRAINT attempts_outbox_id_fkey;
CREATE TABLE webhook.key_heads (
    endpoint_id     integer NOT NULL,
    ordering_key    text    NOT NULL,
    head_id         bigint  NOT NULL,
    tail_id         bigint  NOT NULL,
    -- Due time; a claim moves it a lease ahead (a visibility timeout), so a
    -- head whose relay died is due again by itself.
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    claimed_by      text,
    PRIMARY KEY (endpoint_id, ordering_key)
) WITH (fillfactor = 50);
CREATE INDEX key_heads_due ON webhook.key_heads (endpoint_id, next_attempt_at);

-- V6's webhook.enqueue with the head upsert in the same statement as the
-- insert (the trigger's path; the two-statement path for a transaction
-- without an id is left as in V5, unused here).
CREATE OR REPLACE FUNCTION webhook.enqueue(event_code text, payload jsonb, ordering_key text DEFAULT NULL,
                                           event_id text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    new_event_id text := coalesce(enqueue.event_id, webhook.new_event_id());
    written integer;
    armed boolean;
BEGIN
    IF event_code IS NULL OR payload IS NULL THEN
        RAISE EXCEPTION 'webhook.enqueue: event_code and payload must not be NULL';
    END IF;
    WITH ins AS (
        INSERT INTO webhook.outbox (event_id, event_code, payload, ordering_key, endpoint_id)
        SELECT new_event_id, enqueue.event_code, enqueue.payload, enqueue.ordering_key, e.endpoint_id
          FROM webhook.endpoints e
         WHERE e.enabled AND enqueue.event_code = ANY (e.events)
        RETURNING id, endpoint_id
    ), heads AS (
        INSERT INTO webhook.key_heads AS h (endpoint_id, ordering_key, head_id, tail_id)
        SELECT ins.endpoint_id, enqueue.ordering_key, ins.id, ins.id
          FROM ins
         WHERE enqueue.ordering_key IS NOT NULL
        ON CONFLICT ON CONSTRAINT key_heads_pkey DO UPDATE SET tail_id = excluded.tail_id
    )
    SELECT count(*), coalesce(bool_or(w.armed), false) INTO written, armed
      FROM ins LEFT JOIN webhook.wakeup w ON w.endpoint_id = ins.endpoint_id;
    IF written = 0 THEN
        RETURN NULL;
    END IF;
    IF armed THEN
        PERFORM pg_notify('webhook_outbox', '');
    END IF;
    RETURN new_event_id;
END;
$$;

CREATE PROCEDURE bench_backlog(n int, keys int) LANGUAGE sql AS $$
    TRUNCATE webhook.outbox, webhook.key_heads CASCADE;
    TRUNCATE webhook.attempts;
    INSERT INTO webhook.outbox (event_id, event_code, payload, ordering_key, endpoint_id)
    SELECT webhook.new_event_id(), 'add_credits', bench_payload(g % keys + 1), 'b' || (g % keys + 1), 1
      FROM generate_series(1, n) g;
    INSERT INTO webhook.key_heads (endpoint_id, ordering_key, head_id, tail_id)
    SELECT endpoint_id, ordering_key, min(id), max(id) FROM webhook.outbox GROUP BY endpoint_id, ordering_key;
$$;
CREATE PROCEDURE bench_reset() LANGUAGE sql AS $$
    TRUNCATE webhook.outbox, webhook.key_heads CASCADE; TRUNCATE webhook.attempts
$$;
CREATE FUNCTION bench_left() RETURNS bigint LANGUAGE sql AS $$
    SELECT count(*) FROM webhook.outbox WHERE status <> 'delivered'
$$;

-- Prototype C's relay loop: claim up to `batch` heads with their events,
-- commit, write the outcomes back (which moves the heads), commit.
CREATE PROCEDURE bench_drain(batch int) LANGUAGE plpgsql AS $$
DECLARE
    claim text := (SELECT sql FROM bench_stmt WHERE name = 'claim');
    complete text := (SELECT sql FROM bench_stmt WHERE name = 'complete');
    r record;
    ids bigint[];
    att int[];
    vers text[];
    n int;
BEGIN
    SET enable_seqscan = off;
    LOOP
        ids := '{}'; att := '{}'; vers := '{}';
        FOR r IN EXECUTE claim USING 1, batch, 30.0::float8, 'bench' LOOP
            ids := ids || r.id; att := att || (r.attempts + 1); vers := vers || r.ctid;
        END LOOP;
        COMMIT;
        n := cardinality(ids);
        EXIT WHEN n = 0;
        EXECUTE complete USING ids, att, array_fill('delivered'::text, ARRAY[n]),
            array_fill(now(), ARRAY[n]), array_fill(5, ARRAY[n]), array_fill(200, ARRAY[n]),
            array_fill(NULL::text, ARRAY[n]), array_fill(NULL::text, ARRAY[n]),
            array_fill(NULL::timestamptz, ARRAY[n]), 'bench', vers;
        COMMIT;
    END LOOP;
END $$;
