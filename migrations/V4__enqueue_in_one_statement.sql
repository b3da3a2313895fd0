-- webhook.enqueue() in one statement when it can be.
--
-- A writer must read the wake-up switches with a snapshot taken after its
-- transaction got its id (docs/wakeup.md, "The race at the moment of
-- arming"). In V1 the switches were always read in a statement of their own,
-- after the INSERT that may have given the transaction its id. But a trigger
-- runs after the application's own write, so its transaction already has an
-- id: then one statement can insert and read the switches, and each saves a
-- statement per event (measured: about 8 % of an 8-client top-up workload
-- with Postgres on one core). A bare `SELECT webhook.enqueue(...)` as the
-- first write of a transaction still takes the two-statement path.

CREATE OR REPLACE FUNCTION webhook.enqueue(event_code text, payload jsonb, ordering_key text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    new_event_id text := 'evt_' || replace(gen_random_uuid()::text, '-', '');
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
