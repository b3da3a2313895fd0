-- Add this relay's attempts of endpoint $1 to webhook.endpoint_minutes: $2
-- the minutes (each the start of its minute), $3 delivered and $4 failed
-- attempts in each. In the same statement, the endpoint's rows older than a
-- day go (a range of the primary key, usually empty).
WITH gone AS (
    DELETE FROM webhook.endpoint_minutes
     WHERE endpoint_id = $1
       AND minute < now() - interval '1 day'
)
INSERT INTO webhook.endpoint_minutes AS m (endpoint_id, minute, delivered, failed)
SELECT $1, t.minute, t.delivered, t.failed
  FROM unnest($2::timestamptz[], $3::int[], $4::int[]) AS t(minute, delivered, failed)
ON CONFLICT (endpoint_id, minute) DO UPDATE
   SET delivered = m.delivered + EXCLUDED.delivered,
       failed = m.failed + EXCLUDED.failed
