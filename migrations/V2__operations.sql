-- Operating the relay from psql: replay and purge functions, the DBA views,
-- and the indexes that keep retention and failure look-ups cheap
-- (docs/dba.md). Forward only: later changes go in V3__..., never here.

-- Retention deletes the oldest delivered rows first; this partial index finds
-- them without reading the rows still in the queue, and costs one small index
-- entry per delivery.
CREATE INDEX outbox_delivered_at ON webhook.outbox (delivered_at) WHERE status = 'delivered';

-- Failed attempts, newest first: webhook.recent_failures, the latest error
-- of `outbox-relay status`. Failures are the rare case, so the index is small.
CREATE INDEX attempts_failed ON webhook.attempts (started_at) WHERE error IS NOT NULL;

-- Retention deletes a steady trickle of old rows; vacuum them sooner than the
-- default 20 % so the freed space is reused and the tables stay the size of
-- the retained history instead of growing.
ALTER TABLE webhook.outbox SET (autovacuum_vacuum_scale_factor = 0.05, autovacuum_analyze_scale_factor = 0.05);
ALTER TABLE webhook.attempts SET (autovacuum_vacuum_scale_factor = 0.05, autovacuum_analyze_scale_factor = 0.05);

-- The endpoint_id of endpoint `name`, NULL for a NULL name; raises (naming
-- the caller) for a name that is not in webhook.endpoints.
CREATE FUNCTION webhook.endpoint_id_of(name text, caller text)
RETURNS integer
LANGUAGE plpgsql
STABLE
AS $$
DECLARE
    id integer;
BEGIN
    IF endpoint_id_of.name IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT e.endpoint_id INTO id FROM webhook.endpoints e WHERE e.name = endpoint_id_of.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION '%: no endpoint named %', caller, quote_literal(endpoint_id_of.name)
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN id;
END;
$$;

-- ---------------------------------------------------------------------------
-- Replay: rows back to pending with a fresh attempt budget. They keep their
-- id and event_id (receivers de-duplicate on webhook-id), their history in
-- webhook.attempts, and the latest response fields until the next attempt
-- overwrites them. A NOTIFY wakes an idle relay at once.

-- Replays one row by id. Refuses a row that is in flight (its attempt has not
-- ended) and an id that does not exist. Returns 1.
CREATE FUNCTION webhook.replay(outbox_id bigint, dry_run boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    row_status text;
    row_claimed_by text;
    row_lease timestamptz;
BEGIN
    SELECT o.status, o.claimed_by, o.lease_expires_at
      INTO row_status, row_claimed_by, row_lease
      FROM webhook.outbox o
     WHERE o.id = replay.outbox_id
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'webhook.replay: no outbox row with id %', outbox_id
              USING ERRCODE = 'no_data_found';
    END IF;
    IF row_status = 'in_flight' THEN
        RAISE EXCEPTION 'webhook.replay: row % is in flight (relay %, lease until %); replay it once that attempt has ended',
              outbox_id, coalesce(row_claimed_by, '?'), row_lease
              USING ERRCODE = 'object_in_use';
    END IF;
    IF dry_run THEN
        RETURN 1;
    END IF;
    UPDATE webhook.outbox o
       SET status = 'pending',
           attempts = 0,
           next_attempt_at = now(),
           delivered_at = NULL,
           lease_expires_at = NULL,
           claimed_by = NULL
     WHERE o.id = replay.outbox_id;
    PERFORM pg_notify('webhook_outbox', '');
    RETURN 1;
END;
$$;

-- Replays every row in `status` ('dead' by default; 'delivered' re-sends,
-- 'pending' retries now with a fresh budget), optionally of one endpoint and
-- created in [since, until). Returns how many rows it replayed, or with
-- dry_run how many it would.
CREATE FUNCTION webhook.replay(endpoint text DEFAULT NULL,
                               status text DEFAULT 'dead',
                               since timestamptz DEFAULT NULL,
                               until timestamptz DEFAULT NULL,
                               dry_run boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    ep integer;
    n bigint;
BEGIN
    IF replay.status IS NULL OR replay.status NOT IN ('dead', 'delivered', 'pending') THEN
        RAISE EXCEPTION 'webhook.replay: status must be dead, delivered or pending, not %',
              coalesce(quote_literal(replay.status), 'NULL')
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
    ep := webhook.endpoint_id_of(replay.endpoint, 'webhook.replay');

    IF dry_run THEN
        SELECT count(*) INTO n
          FROM webhook.outbox o
         WHERE o.status = replay.status
           AND (ep IS NULL OR o.endpoint_id = ep)
           AND (replay.since IS NULL OR o.created_at >= replay.since)
           AND (replay.until IS NULL OR o.created_at < replay.until);
        RETURN n;
    END IF;

    UPDATE webhook.outbox o
       SET status = 'pending',
           attempts = 0,
           next_attempt_at = now(),
           delivered_at = NULL,
           lease_expires_at = NULL,
           claimed_by = NULL
     WHERE o.status = replay.status
       AND (ep IS NULL OR o.endpoint_id = ep)
       AND (replay.since IS NULL OR o.created_at >= replay.since)
       AND (replay.until IS NULL OR o.created_at < replay.until);
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM pg_notify('webhook_outbox', '');
    END IF;
    RETURN n;
END;
$$;

-- ---------------------------------------------------------------------------
-- Purge: dead rows are never removed automatically (retention only removes
-- delivered rows); a DBA removes them here once they are understood. Their
-- webhook.attempts rows go with them.

-- Purges one dead row by id. Refuses a row that is not dead. Returns 1.
CREATE FUNCTION webhook.purge_dead(outbox_id bigint, dry_run boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    row_status text;
BEGIN
    SELECT o.status INTO row_status FROM webhook.outbox o WHERE o.id = purge_dead.outbox_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'webhook.purge_dead: no outbox row with id %', outbox_id
              USING ERRCODE = 'no_data_found';
    END IF;
    IF row_status <> 'dead' THEN
        RAISE EXCEPTION 'webhook.purge_dead: row % is %, not dead', outbox_id, row_status
              USING ERRCODE = 'object_in_use';
    END IF;
    IF NOT dry_run THEN
        DELETE FROM webhook.outbox o WHERE o.id = purge_dead.outbox_id;
    END IF;
    RETURN 1;
END;
$$;

-- Purges every dead row, optionally of one endpoint and created in
-- [since, until). Returns how many rows it removed, or with dry_run would.
CREATE FUNCTION webhook.purge_dead(endpoint text DEFAULT NULL,
                                   since timestamptz DEFAULT NULL,
                                   until timestamptz DEFAULT NULL,
                                   dry_run boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    ep integer := webhook.endpoint_id_of(purge_dead.endpoint, 'webhook.purge_dead');
    n bigint;
BEGIN
    IF dry_run THEN
        SELECT count(*) INTO n
          FROM webhook.outbox o
         WHERE o.status = 'dead'
           AND (ep IS NULL OR o.endpoint_id = ep)
           AND (purge_dead.since IS NULL OR o.created_at >= purge_dead.since)
           AND (purge_dead.until IS NULL OR o.created_at < purge_dead.until);
        RETURN n;
    END IF;
    DELETE FROM webhook.outbox o
     WHERE o.status = 'dead'
       AND (ep IS NULL OR o.endpoint_id = ep)
       AND (purge_dead.since IS NULL OR o.created_at >= purge_dead.since)
       AND (purge_dead.until IS NULL OR o.created_at < purge_dead.until);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END;
$$;

-- ---------------------------------------------------------------------------
-- Views for a bad day. Each reads through the partial indexes (pending, in
-- flight, dead, failed attempts) or a bounded time window, never the whole
-- delivered history.

-- What is waiting, per endpoint. `due` rows are pending and past their
-- next_attempt_at: a growing `due` means the relay is not keeping up (or not
-- running); `pending` minus `due` are retries waiting for their backoff.
CREATE VIEW webhook.backlog AS
SELECT e.name AS endpoint,
       e.enabled,
       p.pending,
       p.due,
       f.in_flight,
       d.dead,
       p.oldest_pending_at,
       now() - p.oldest_pending_at AS oldest_pending_age,
       p.next_attempt_at
  FROM webhook.endpoints e
 CROSS JOIN LATERAL (
        SELECT count(*) AS pending,
               count(*) FILTER (WHERE o.next_attempt_at <= now()) AS due,
               min(o.created_at) AS oldest_pending_at,
               min(o.next_attempt_at) AS next_attempt_at
          FROM webhook.outbox o
         WHERE o.endpoint_id = e.endpoint_id AND o.status = 'pending') p
 CROSS JOIN LATERAL (
        SELECT count(*) AS in_flight
          FROM webhook.outbox o
         WHERE o.endpoint_id = e.endpoint_id AND o.status = 'in_flight') f
 CROSS JOIN LATERAL (
        SELECT count(*) AS dead
          FROM webhook.outbox o
         WHERE o.endpoint_id = e.endpoint_id AND o.status = 'dead') d;

-- How each endpoint has answered over the last hour, from webhook.attempts:
-- a success is an attempt without error (a 2xx answer). Response times are in
-- milliseconds, over all attempts (a timeout counts with its full duration).
-- Every column but the endpoint's is NULL (or 0) when it had no attempt.
CREATE VIEW webhook.endpoint_health AS
SELECT e.name AS endpoint,
       e.enabled,
       count(a.id) AS attempts,
       count(a.id) FILTER (WHERE a.error IS NULL) AS succeeded,
       count(a.id) FILTER (WHERE a.error IS NOT NULL) AS failed,
       round(100.0 * count(a.id) FILTER (WHERE a.error IS NULL) / nullif(count(a.id), 0), 1) AS success_pct,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY a.duration_ms) AS p50_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY a.duration_ms) AS p95_ms,
       max(a.started_at) FILTER (WHERE a.error IS NULL) AS last_success_at,
       max(a.started_at) FILTER (WHERE a.error IS NOT NULL) AS last_failure_at,
       (array_agg(a.error ORDER BY a.started_at DESC) FILTER (WHERE a.error IS NOT NULL))[1] AS last_error
  FROM webhook.endpoints e
  LEFT JOIN (webhook.outbox o
             JOIN webhook.attempts a ON a.outbox_id = o.id AND a.started_at > now() - interval '1 hour')
         ON o.endpoint_id = e.endpoint_id
 GROUP BY e.endpoint_id, e.name, e.enabled;

-- Failed attempts of the last 24 hours, newest first, with the row they
-- belong to and where that row stands now (row_status: retrying as
-- 'pending', 'dead', or since 'delivered').
CREATE VIEW webhook.recent_failures AS
SELECT a.started_at,
       e.name AS endpoint,
       o.id AS outbox_id,
       o.event_id,
       o.event_code,
       a.attempt,
       a.response_status,
       a.duration_ms,
       a.error,
       left(a.response_body, 200) AS response_body,
       o.status AS row_status,
       o.next_attempt_at
  FROM webhook.attempts a
  JOIN webhook.outbox o ON o.id = a.outbox_id
  JOIN webhook.endpoints e ON e.endpoint_id = o.endpoint_id
 WHERE a.error IS NOT NULL
   AND a.started_at > now() - interval '24 hours'
 ORDER BY a.started_at DESC;
