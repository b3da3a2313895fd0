-- Less work per outbox row, measured in instructions per top-up through the
-- reference trigger (a single-user backend under callgrind, BENCHMARKS.md):
--
-- 1. The status CHECK becomes a domain. Postgres reads a table's CHECK
--    constraints back from their stored text and plans them again in every
--    statement that writes the table; a domain's constraint is kept ready in
--    the type cache. Same rule, same values: 654k -> 620k instructions.
-- 2. The attempts >= 0 CHECK goes: only the relay's claim (+1), its release
--    (-1, of its own claim) and replay (0) write that column. 620k -> 606k.
-- 3. One index for the three unsettled states instead of three partial
--    indexes: every statement that writes the outbox opens each index and
--    prepares each partial predicate, matching or not. 606k -> 594k.
-- 4. Event ids start with the time in milliseconds, so a new id lands at the
--    right-hand end of outbox_event_id instead of on a random page of it.
--
-- The status column changes type in two steps, so the table is not
-- rewritten: changing a column to a domain that has a constraint rewrites the
-- table and its indexes under an exclusive lock; changing it to a domain
-- without one only relabels the column, and adding the constraint to the
-- domain afterwards reads the rows once to check them (they all passed the
-- old CHECK). The views of V2 depend on the column, so they are dropped
-- first and created again afterwards from their own stored definitions.
DO $$
DECLARE
    views text[] := ARRAY['webhook.backlog', 'webhook.endpoint_health', 'webhook.recent_failures'];
    definitions text[];
BEGIN
    SELECT array_agg(pg_get_viewdef(v::regclass) ORDER BY i)
      INTO definitions
      FROM unnest(views) WITH ORDINALITY AS t(v, i);
    DROP VIEW webhook.backlog, webhook.endpoint_health, webhook.recent_failures;

    CREATE DOMAIN webhook.delivery_status AS text;
    ALTER TABLE webhook.outbox
        DROP CONSTRAINT outbox_status_check,
        DROP CONSTRAINT outbox_attempts_check,
        ALTER COLUMN status TYPE webhook.delivery_status;
    ALTER DOMAIN webhook.delivery_status
        ADD CONSTRAINT delivery_status_check CHECK (VALUE IN ('pending', 'in_flight', 'delivered', 'dead'));

    FOR i IN 1 .. array_length(views, 1) LOOP
        EXECUTE format('CREATE VIEW %s AS %s', views[i], definitions[i]);
    END LOOP;
END;
$$;

-- Claiming (endpoint, 'pending', due first), the rescuer (endpoint,
-- 'in_flight'), dead rows per endpoint (endpoint, 'dead'). Delivered rows,
-- the bulk of the table, are not in it.
CREATE INDEX outbox_queue ON webhook.outbox (endpoint_id, status, next_attempt_at, id)
    WHERE status IN ('pending', 'in_flight', 'dead');
DROP INDEX webhook.outbox_pending_due, webhook.outbox_in_flight_lease, webhook.outbox_dead;

-- 'evt_', 12 hex digits of Unix milliseconds, then the last 20 hex digits of
-- a random UUID (74 random bits): the same length as before, unique without
-- coordination, and increasing with time. A single SELECT in SQL, so Postgres
-- inlines it where it is called. date_part, not extract: extract computes in
-- numeric; with it this function cost 22k instructions per event more than
-- the old random id, with date_part 8k.
CREATE FUNCTION webhook.new_event_id()
RETURNS text
LANGUAGE sql
VOLATILE
AS $$
    SELECT 'evt_'
        || lpad(to_hex((date_part('epoch', clock_timestamp()) * 1000)::bigint), 12, '0')
        || right(replace(gen_random_uuid()::text, '-', ''), 20)
$$;

CREATE OR REPLACE FUNCTION webhook.enqueue(event_code text, payload jsonb, ordering_key text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    new_event_id text := webhook.new_event_id();
    written integer;
    armed boolean;
    endpoint_ids integer[];
BEGIN
    IF event_code IS NULL OR payload IS NULL THEN
        RAISE EXCEPTION 'webhook.enqueue: event_code and payload must not be NULL';
    END IF;

    IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
        -- This statement's snapshot is younger than the transaction's id.
        WITH ins AS (
            INSERT INTO webhook.outbox (event_id, event_code, payload, ordering_key, endpoint_id)
            SELECT new_event_id, enqueue.event_code, enqueue.payload, enqueue.ordering_key, e.endpoint_id
              FROM webhook.endpoints e
             WHERE e.enabled AND enqueue.event_code = ANY (e.events)
            RETURNING endpoint_id
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
    END IF;

    -- The INSERT may be what gives the transaction its id: read the switches
    -- in a statement of its own, after it.
    WITH ins AS (
        INSERT INTO webhook.outbox (event_id, event_code, payload, ordering_key, endpoint_id)
        SELECT new_event_id, enqueue.event_code, enqueue.payload, enqueue.ordering_key, e.endpoint_id
          FROM webhook.endpoints e
         WHERE e.enabled AND enqueue.event_code = ANY (e.events)
        RETURNING endpoint_id
    )
    SELECT array_agg(ins.endpoint_id) INTO endpoint_ids FROM ins;
    IF endpoint_ids IS NULL THEN
        RETURN NULL;
    END IF;
    IF EXISTS (SELECT 1 FROM webhook.wakeup w WHERE w.endpoint_id = ANY (endpoint_ids) AND w.armed) THEN
        PERFORM pg_notify('webhook_outbox', '');
    END IF;
    RETURN new_event_id;
END;
$$;
