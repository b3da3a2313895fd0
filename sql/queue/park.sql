-- Park events of endpoint $1 behind their held keys: keys $2, outbox ids $3.
-- A row parked already (by a relay before this one) stays as it is.
INSERT INTO webhook.parked (endpoint_id, ordering_key, outbox_id)
SELECT $1, k, id
  FROM unnest($2::text[], $3::bigint[]) AS p(k, id)
ON CONFLICT DO NOTHING
