-- After the endpoint sync: fresh statistics for webhook.endpoints. The table
-- has a handful of rows and autovacuum may never analyze it (its threshold is
-- 50 changed rows); without statistics the planner assumes a few hundred
-- endpoints, and the DBA views that read each endpoint's backlog
-- (webhook.backlog, `outbox-relay status`) look costly enough to be compiled
-- by JIT, which takes longer than running them. Reads a few pages.
ANALYZE webhook.endpoints
