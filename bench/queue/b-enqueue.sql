-- Prototype B's webhook.enqueue: one statement in every case, with no
-- aggregate, sort or CTE to set up per call (callgrind: count() and bool_or()
-- over a CTE cost about 20k instructions per event in V5's shape, a sorted
-- LIMIT 1 as much).
--
-- The transaction gets its id first (a trigger's already has one). That
-- serves twice: the log's reading needs every row's id to be drawn after its
-- transaction's id (docs/queue.md, "Reading the log"), and the wake-up
-- switches are then read with a snapshot younger than that id
-- (docs/wakeup.md), so V4's second statement for that case goes. The switch
-- is read in the INSERT's own join, and an armed one sends the NOTIFY from
-- there (webhook.wake() is true, after notifying; Postgres folds repeated
-- notifications of one transaction into one).
CREATE FUNCTION webhook.wake() RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_notify('webhook_outbox', '');
    RETURN true;
END;
$$;

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
      LEFT JOIN webhook.wakeup w ON w.endpoint_id = e.endpoint_id
     WHERE e.enabled
       AND enqueue.event_code = ANY (e.events)
       AND (w.armed IS NOT TRUE OR webhook.wake());
    GET DIAGNOSTICS written = ROW_COUNT;
    IF written = 0 THEN
        RETURN NULL;
    END IF;
    RETURN new_event_id;
END;
$$;
