-- The relay's loop for the queues that claim rows one by one (today's and
-- prototype A): claim up to `batch` rows (statement `claim`), commit, write
-- every outcome back as delivered in one statement (`complete`), commit;
-- until a claim finds nothing. Each statement is committed on its own, as the
-- relay's are (autocommit), and planned at every execution, as
-- bench/instructions.sh measures today's.
CREATE PROCEDURE bench_drain(batch int) LANGUAGE plpgsql AS $$
DECLARE
    claim text := (SELECT sql FROM bench_stmt WHERE name = 'claim');
    complete text := (SELECT sql FROM bench_stmt WHERE name = 'complete');
    r record;
    ids bigint[];
    att int[];
    leases timestamptz[];
    vers text[];
    n int;
BEGIN
    SET enable_seqscan = off;
    LOOP
        ids := '{}'; att := '{}'; leases := '{}'; vers := '{}';
        FOR r IN EXECUTE claim USING 1, batch, 30.0::float8, 'bench' LOOP
            ids := ids || r.id; att := att || r.attempts; leases := leases || r.lease_expires_at; vers := vers || r.ctid;
        END LOOP;
        COMMIT;
        n := cardinality(ids);
        EXIT WHEN n = 0;
        EXECUTE complete USING ids, att, array_fill('delivered'::text, ARRAY[n]), array_fill(now(), ARRAY[n]),
            array_fill(5, ARRAY[n]), array_fill(200, ARRAY[n]), array_fill(NULL::text, ARRAY[n]),
            array_fill(NULL::text, ARRAY[n]), array_fill(NULL::timestamptz, ARRAY[n]), 'bench', leases, vers;
        COMMIT;
    END LOOP;
END $$;

-- A backlog of n pending rows over `keys` ordering keys, as the triggers
-- leave them (one statement: for the queues that claim rows, who wrote them
-- does not matter).
CREATE PROCEDURE bench_backlog(n int, keys int) LANGUAGE sql AS $$
    TRUNCATE webhook.outbox CASCADE;
    INSERT INTO webhook.outbox (event_id, event_code, payload, ordering_key, endpoint_id)
    SELECT webhook.new_event_id(), 'add_credits', bench_payload(g % keys + 1), 'b' || (g % keys + 1), 1
      FROM generate_series(1, n) g;
$$;

CREATE PROCEDURE bench_reset() LANGUAGE sql AS $$ TRUNCATE webhook.outbox CASCADE $$;
CREATE FUNCTION bench_left() RETURNS bigint LANGUAGE sql AS $$
    SELECT count(*) FROM webhook.outbox WHERE status <> 'delivered'
$$;
