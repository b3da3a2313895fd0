-- The next parked events of endpoint $1's keys $2, each after its id $3, at
-- most $4 per key, in id order: what goes once a held key moves on ($5: the
-- endpoint's partition mask). A function (migration V12) so that it plans
-- with ordered index scans, which the queue sessions otherwise turn off.
SELECT ordering_key, id, event_id, attempts, payload, version, part
  FROM webhook.parked_next($1, $2, $3, $4, $5)
