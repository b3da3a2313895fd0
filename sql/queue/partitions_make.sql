-- Endpoint $1's partitions, made if missing: free, with a tick that sees
-- nothing yet (the first read takes every unsettled row). Returns the
-- endpoint's partition count.
WITH made AS (
    INSERT INTO webhook.partitions (endpoint_id, partition)
    SELECT e.endpoint_id, p
      FROM webhook.endpoints e, generate_series(0, e.partitions - 1) AS p
     WHERE e.endpoint_id = $1
    ON CONFLICT DO NOTHING
)
SELECT partitions FROM webhook.endpoints WHERE endpoint_id = $1
