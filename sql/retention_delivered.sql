-- Retention: remove delivered rows created more than $1 seconds ago, oldest
-- first by id, looking at the next $2 rows after id $3 (where the previous
-- batch of this sweep stopped; 0 to start), with their webhook.attempts rows
-- in the same statement (there is no foreign key to cascade). Rows are
-- appended in id order with created_at rising, so the batch stops at the
-- first row of the window that is still young: what follows it is younger
-- (to within the length of a writing transaction) and waits for a later
-- sweep. Dead and unsettled rows in the window are skipped and stay. Reads
-- at most $2 rows of outbox_pkey and their pages, whatever the history.
-- Returns how many rows it removed and where the next batch starts (NULL:
-- nothing older is left to look at). SKIP LOCKED lets several relays share
-- the work; `= ANY (ARRAY(...))` keeps the deletes look-ups by id.
WITH win AS (
    SELECT o.id, o.status = 'delivered' AS delivered,
           o.created_at < now() - make_interval(secs => $1) AS old
      FROM webhook.outbox o
     WHERE o.id > $3
     ORDER BY o.id
     LIMIT $2
), young AS (
    SELECT min(w.id) AS id FROM win w WHERE NOT w.old
), gone AS (
    DELETE FROM webhook.outbox o
     WHERE o.id = ANY (ARRAY(
            SELECT x.id
              FROM webhook.outbox x
             WHERE x.id = ANY (ARRAY(SELECT w.id FROM win w, young y
                                      WHERE w.delivered AND (y.id IS NULL OR w.id < y.id)))
               AND x.status = 'delivered'
               FOR UPDATE SKIP LOCKED))
    RETURNING o.id
), history AS (
    DELETE FROM webhook.attempts a WHERE a.outbox_id = ANY (ARRAY(SELECT g.id FROM gone g))
)
SELECT (SELECT count(*) FROM gone) AS removed,
       CASE WHEN (SELECT y.id FROM young y) IS NULL AND (SELECT count(*) FROM win) = $2
            THEN (SELECT max(w.id) FROM win w) END AS next_after
