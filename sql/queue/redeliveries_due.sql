-- Redeliveries of endpoint $1 that are due (replayed rows; retries of
-- unordered events), of the partitions $2 this relay owns ($3: the partition
-- mask), except those in flight ($4), at most $5, soonest first. A function
-- (migration V12) so that it plans with ordered index scans, which the queue
-- sessions otherwise turn off.
SELECT id, event_id, ordering_key, attempts, payload, version, part
  FROM webhook.redeliveries_due($1, $2, $3, $4, $5)
