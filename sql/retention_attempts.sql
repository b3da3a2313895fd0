-- Retention: remove up to $2 attempts older than $1 seconds, oldest first,
-- whatever their row's status (a dead row keeps its latest outcome on the row
-- itself). One short statement per batch, as retention_delivered.sql.
DELETE FROM webhook.attempts
 WHERE id = ANY (ARRAY(
        SELECT id
          FROM webhook.attempts
         WHERE started_at < now() - make_interval(secs => $1)
         ORDER BY started_at
         LIMIT $2
           FOR UPDATE SKIP LOCKED))
