-- True once every transaction that was in progress in snapshot $1 has ended:
-- none of them can still commit an outbox row without having seen the switch.
SELECT NOT EXISTS (
    SELECT 1
      FROM pg_snapshot_xip($1::text::pg_snapshot) AS x
     WHERE pg_xact_status(x) = 'in progress'
)
