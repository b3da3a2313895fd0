-- Event ids without a cryptographic random source. gen_random_uuid() draws
-- from OpenSSL (pg_strong_random); the id needs to be unique, not
-- unguessable (it is sent in the clear as webhook-id and the signature
-- covers it). The same 12 hex digits of Unix milliseconds, then 80 bits from
-- random(), Postgres's per-session generator (seeded from the strong source
-- when the session starts): the same length and shape as V5's ids.
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
