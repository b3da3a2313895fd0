-- Status API: every copy of event $1, one per endpoint, optionally only
-- endpoint $2's (an endpoint token sees only its own). Uses outbox_event_id.
SELECT o.event_code,
       o.payload,
       o.created_at,
       e.name,
       o.status,
       o.attempts,
       o.next_attempt_at,
       o.delivered_at,
       o.response_status,
       o.response_body,
       o.response_ms,
       o.last_error
  FROM webhook.outbox o
  JOIN webhook.endpoints e ON e.endpoint_id = o.endpoint_id
 WHERE o.event_id = $1
   AND ($2::text IS NULL OR e.name = $2)
 ORDER BY e.name
