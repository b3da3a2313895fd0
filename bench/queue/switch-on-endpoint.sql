-- The wake-up switch as a column of the endpoint's own row instead of a row
-- of webhook.wakeup: webhook.enqueue already reads that row to route the
-- event, so the switch costs the writer no second table to open, lock and
-- join. Arming and disarming become HOT updates of webhook.endpoints (the
-- column is in no index); writers never lock the row they read.
ALTER TABLE webhook.endpoints ADD COLUMN armed boolean NOT NULL DEFAULT false;

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
