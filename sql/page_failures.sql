-- The status page (GET /): the latest $1 failed attempts of the last 24
-- hours, newest first, with the endpoint, the row's event and status now,
-- and the first $2 characters of the response (through attempts_failed).
SELECT a.started_at,
       e.name,
       o.event_id,
       o.event_code,
       a.attempt,
       a.probe,
       a.response_status,
       a.error,
       left(a.response_body, $2::int) AS response_excerpt,
       o.status
  FROM webhook.attempts a
  JOIN webhook.outbox o ON o.id = a.outbox_id
  JOIN webhook.endpoints e ON e.endpoint_id = o.endpoint_id
 WHERE a.error IS NOT NULL
   AND a.started_at > now() - interval '24 hours'
 ORDER BY a.started_at DESC
 LIMIT $1
