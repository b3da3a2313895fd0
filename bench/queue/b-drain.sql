-- Prototype B's relay loop: read a page (a tick), commit, write its
-- outcomes back as delivered, commit, move the cursor, commit; until a read
-- finds nothing. One relay owning all 16 partitions.
CREATE PROCEDURE bench_drain(batch int) LANGUAGE plpgsql AS $$
DECLARE
    rd text := (SELECT sql FROM bench_stmt WHERE name = 'read');
    complete text := (SELECT sql FROM bench_stmt WHERE name = 'complete');
    cur text := (SELECT sql FROM bench_stmt WHERE name = 'cursor');
    parts int[] := ARRAY(SELECT generate_series(0, 15));
    -- The backlog's transactions have consecutive ids from x0 on, one event
    -- each; each tick is made to see `batch` more of them committed. Four
    -- transactions that wrote nothing were in progress at every tick, as
    -- writers busy elsewhere would be.
    x bigint := (SELECT x0 FROM bench_backlog_xids);
    running xid8[] := ARRAY[(x - 7)::text::xid8, (x - 5)::text::xid8, (x - 3)::text::xid8, (x - 2)::text::xid8];
    tick text;
    r record;
    ids bigint[];
    vers text[];
    n int;
BEGIN
    -- The relay's sessions: no sequential scans (as today), and no plain
    -- index scans either. Every statement of this queue is a TID scan or a
    -- bitmap scan; with plain index scans allowed, the planner walked all of
    -- outbox_pkey for the write-back whenever that looked cheaper than 200
    -- TID look-ups, a cost that grew with the table.
    SET enable_seqscan = off;
    SET enable_indexscan = off;
    LOOP
        ids := '{}'; vers := '{}';
        tick := format('%s:%s:%s', running[1], x + batch, array_to_string(running, ','));
        FOR r IN EXECUTE rd USING 1, x::text::xid8, running, tick, parts, batch LOOP
            CONTINUE WHEN r.id IS NULL;
            ids := ids || r.id; vers := vers || r.ctid;
        END LOOP;
        COMMIT;
        n := cardinality(ids);
        EXIT WHEN n = 0;
        x := x + batch;
        EXECUTE complete USING ids, array_fill(1, ARRAY[n]), array_fill('delivered'::text, ARRAY[n]),
            array_fill(now(), ARRAY[n]), array_fill(5, ARRAY[n]), array_fill(200, ARRAY[n]),
            array_fill(NULL::text, ARRAY[n]), array_fill(NULL::text, ARRAY[n]),
            array_fill(NULL::timestamptz, ARRAY[n]), 'bench', vers;
        COMMIT;
        EXECUTE cur USING 1, tick, 'bench';
        COMMIT;
    END LOOP;
END $$;

-- n events over `keys` keys, each written by a transaction of its own (as
-- top-ups are), their transaction ids consecutive from x0.
CREATE TABLE bench_backlog_xids (x0 bigint);
CREATE PROCEDURE bench_backlog(n int, keys int) LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE webhook.outbox;
    TRUNCATE webhook.attempts;
    TRUNCATE bench_backlog_xids;
    COMMIT;
    FOR g IN 1 .. n LOOP
        INSERT INTO webhook.outbox (event_id, event_code, payload, ordering_key, endpoint_id)
        VALUES (webhook.new_event_id(), 'add_credits', bench_payload(g % keys + 1), 'b' || (g % keys + 1), 1);
        IF g = 1 THEN
            INSERT INTO bench_backlog_xids VALUES (pg_current_xact_id()::text::bigint);
        END IF;
        COMMIT;
    END LOOP;
END $$;
CREATE PROCEDURE bench_reset() LANGUAGE sql AS $$ TRUNCATE webhook.outbox CASCADE; TRUNCATE webhook.attempts $$;
CREATE FUNCTION bench_left() RETURNS bigint LANGUAGE sql AS $$
    SELECT count(*) FROM webhook.outbox WHERE status <> 'delivered'
$$;
