-- Held heads of endpoint $1 whose retry is due (all of them, due or not,
-- when $6: a probe), of the partitions $2 this relay owns ($3: the partition
-- mask), except keys whose head is in flight ($4), at most $5, soonest first.
-- A function (migration V12) so that it plans with ordered index scans,
-- which the queue sessions otherwise turn off.
SELECT ordering_key, id, event_id, attempts, payload, version, part
  FROM webhook.holds_due($1, $2, $3, $4, $5, $6)
