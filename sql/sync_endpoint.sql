-- Mirror one configured endpoint (upsert by name). $1 name, $2 url (password
-- redacted), $3 events, $4 enabled. Returns its endpoint_id. In the same
-- statement the endpoint gets its webhook.partitions rows (endpoints.partitions
-- of them, free, with the tick '1:1:' that sees no transaction, so the first
-- read takes every unsettled row); an endpoint that has them keeps them.
WITH ep AS (
    INSERT INTO webhook.endpoints AS e (name, url, events, enabled)
    VALUES ($1, $2, $3, $4)
    ON CONFLICT (name) DO UPDATE
       SET url = EXCLUDED.url,
           events = EXCLUDED.events,
           enabled = EXCLUDED.enabled,
           updated_at = now()
    RETURNING e.endpoint_id, e.partitions
), parts AS (
    INSERT INTO webhook.partitions (endpoint_id, partition)
    SELECT ep.endpoint_id, p FROM ep, generate_series(0, ep.partitions - 1) AS p
    ON CONFLICT (endpoint_id, partition) DO NOTHING
)
SELECT ep.endpoint_id FROM ep
