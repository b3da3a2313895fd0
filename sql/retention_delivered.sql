-- Retention: remove up to $2 delivered rows whose delivery is older than $1
-- seconds, oldest first (their webhook.attempts rows go with them, ON DELETE
-- CASCADE). One short statement per batch, so no lock is held for long;
-- SKIP LOCKED lets several relays share the work. `= ANY (ARRAY(...))` keeps
-- the delete an index look-up by id (an `IN (subquery)` may be planned as a
-- scan of the whole table).
DELETE FROM webhook.outbox
 WHERE id = ANY (ARRAY(
        SELECT id
          FROM webhook.outbox
         WHERE status = 'delivered'
           AND delivered_at < now() - make_interval(secs => $1)
         ORDER BY delivered_at
         LIMIT $2
           FOR UPDATE SKIP LOCKED))
