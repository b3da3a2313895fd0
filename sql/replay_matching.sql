-- `outbox-relay replay --endpoint/--all-endpoints`: $1 endpoint name (NULL:
-- all), $2 status, $3 since, $4 until (created_at, NULL: unbounded), $5 dry
-- run. See webhook.replay in migrations/V2__operations.sql.
SELECT webhook.replay($1::text, $2::text, $3::timestamptz, $4::timestamptz, $5::boolean)
