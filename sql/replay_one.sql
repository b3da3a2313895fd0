-- `outbox-relay replay --id`: $1 the outbox row id, $2 dry run. The work and
-- its rules live in webhook.replay (migrations/V2__operations.sql), which DBAs
-- call directly.
SELECT webhook.replay($1::bigint, $2::boolean)
