-- Loaded into every prototype's database before its own schema file: the
-- table that holds the statement texts a prototype's relay loop runs (by
-- EXECUTE, so each execution is planned again, as bench/instructions.sh
-- measures today's statements), filled by bench/queue-prototypes.sh from the
-- files of bench/queue/.
CREATE TABLE bench_stmt (name text PRIMARY KEY, sql text NOT NULL);

-- The reference payload of an add_credits event for buyer b<g>.
CREATE FUNCTION bench_payload(g int) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object('buyerId', 'b' || g, 'buyerName', 'Bench Buyer ' || g,
                              'postCodeList', '["AB1","BN2","GN3"]'::jsonb, 'topUpAmount', 10,
                              'eventCode', 'add_credits')
$$;
