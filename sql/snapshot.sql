-- The transactions in progress right now (run after arm.sql has committed).
SELECT pg_current_snapshot()::text
