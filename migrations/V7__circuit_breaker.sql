-- The circuit breaker (docs/delivery.md, "Paused endpoints"): an endpoint
-- whose every attempt has failed for pause_after is paused; while paused its
-- rows stay pending and the relays send one probe per probe_interval; the
-- first probe that succeeds resumes it. The state lives here, not in a relay,
-- so it survives restarts and every relay on the database obeys it.

-- paused_at / paused_by: set while the endpoint is paused, by the breaker
-- ('auto') or by a person (webhook.pause_endpoint, 'hand'; no probes then).
-- failing_since: the first failed attempt after the latest success, as the
-- relays report it (NULL while the latest attempt succeeded).
-- last_probe_at: when a relay last claimed a probe; the claim of the next one
-- waits for it to be probe_interval old, which is what lets several relays
-- send one probe between them.
ALTER TABLE webhook.endpoints
    ADD COLUMN paused_at timestamptz,
    ADD COLUMN paused_by text CHECK (paused_by IN ('auto', 'hand')),
    ADD COLUMN failing_since timestamptz,
    ADD COLUMN last_probe_at timestamptz,
    ADD CONSTRAINT endpoints_paused_check CHECK ((paused_at IS NULL) = (paused_by IS NULL));

-- A probe is a real delivery and is kept with the other attempts, marked, so
-- a DBA can tell probes from the row's own attempts (a failed probe does not
-- spend the row's attempt budget; see webhook.outbox.attempts).
ALTER TABLE webhook.attempts ADD COLUMN probe boolean NOT NULL DEFAULT false;

-- The failing run after a relay's report: `current` is failing_since as
-- stored, `latest_success` the reporting relay's latest success (NULL: none),
-- `first_failure` its first failure after that success (NULL: none). A
-- success ends the run that began before it; a failure after every success
-- known here starts one, or continues the one already running.
CREATE FUNCTION webhook.breaker_failing_since(current timestamptz,
                                              latest_success timestamptz,
                                              first_failure timestamptz)
RETURNS timestamptz
LANGUAGE sql
IMMUTABLE
AS $$
    SELECT CASE
             WHEN current IS NOT NULL AND (latest_success IS NULL OR current > latest_success) THEN current
             WHEN first_failure IS NOT NULL AND (latest_success IS NULL OR first_failure > latest_success)
                  THEN first_failure
           END
$$;

-- A relay's report of the outcomes it saw for endpoint `id` since its last
-- report (see webhook.breaker_failing_since). Keeps failing_since, pauses the
-- endpoint when failing_since is pause_after old (NULL: the breaker is off
-- for this endpoint), and returns the endpoint's state, with paused_now true
-- when this call paused it. Each relay calls it about once a second per
-- endpoint; a call with nothing to change writes nothing.
CREATE FUNCTION webhook.breaker_report(id integer,
                                       latest_success timestamptz,
                                       first_failure timestamptz,
                                       pause_after interval)
RETURNS TABLE (paused_at timestamptz, paused_by text, failing_since timestamptz,
               last_probe_at timestamptz, enabled boolean, paused_now boolean)
LANGUAGE plpgsql
AS $$
DECLARE
    e webhook.endpoints;
    since timestamptz;
    pause boolean;
BEGIN
    FOR attempt IN 1 .. 2 LOOP
        IF attempt = 1 THEN
            SELECT * INTO e FROM webhook.endpoints x WHERE x.endpoint_id = breaker_report.id;
        ELSE
            -- Something to write: read again under the row lock, so that
            -- concurrent reports of several relays do not undo each other.
            SELECT * INTO e FROM webhook.endpoints x WHERE x.endpoint_id = breaker_report.id
               FOR NO KEY UPDATE;
        END IF;
        IF NOT FOUND THEN
            RETURN;
        END IF;
        since := webhook.breaker_failing_since(e.failing_since, latest_success, first_failure);
        pause := e.paused_at IS NULL AND e.enabled AND pause_after IS NOT NULL
                 AND since IS NOT NULL AND since <= now() - pause_after;
        IF NOT pause AND since IS NOT DISTINCT FROM e.failing_since THEN
            RETURN QUERY SELECT e.paused_at, e.paused_by, e.failing_since, e.last_probe_at, e.enabled, false;
            RETURN;
        END IF;
    END LOOP;
    IF pause THEN
        UPDATE webhook.endpoints x
           SET failing_since = since, paused_at = now(), paused_by = 'auto', last_probe_at = now()
         WHERE x.endpoint_id = breaker_report.id
        RETURNING * INTO e;
    ELSE
        UPDATE webhook.endpoints x
           SET failing_since = since
         WHERE x.endpoint_id = breaker_report.id
        RETURNING * INTO e;
    END IF;
    RETURN QUERY SELECT e.paused_at, e.paused_by, e.failing_since, e.last_probe_at, e.enabled, pause;
END;
$$;

-- Pauses an endpoint by hand: its rows stay pending and no probes are sent
-- until webhook.resume_endpoint. Pausing an endpoint the breaker paused makes
-- it a hand pause (the probes stop). Returns true if it was running before.
CREATE FUNCTION webhook.pause_endpoint(endpoint text)
RETURNS boolean
LANGUAGE plpgsql
AS $$
DECLARE
    was_paused boolean;
BEGIN
    SELECT e.paused_at IS NOT NULL INTO was_paused
      FROM webhook.endpoints e
     WHERE e.endpoint_id = webhook.endpoint_id_of(pause_endpoint.endpoint, 'webhook.pause_endpoint')
       FOR NO KEY UPDATE;
    UPDATE webhook.endpoints e
       SET paused_at = coalesce(e.paused_at, now()), paused_by = 'hand'
     WHERE e.name = pause_endpoint.endpoint;
    RETURN NOT was_paused;
END;
$$;

-- Resumes endpoint `id` (by hand, or after a successful probe): clears the
-- pause and the failing run, makes its rows that wait out a backoff due now
-- (the receiver is back; their backoff was about the outage), and wakes the
-- relays. With only_auto, a hand pause is left alone (a probe that succeeds
-- just after a person paused the endpoint does not undo that). Returns true
-- if the endpoint was paused.
CREATE FUNCTION webhook.resume_endpoint_id(id integer, only_auto boolean DEFAULT false)
RETURNS boolean
LANGUAGE plpgsql
AS $$
BEGIN
    UPDATE webhook.endpoints e
       SET paused_at = NULL, paused_by = NULL, failing_since = NULL, last_probe_at = NULL
     WHERE e.endpoint_id = resume_endpoint_id.id
       AND e.paused_at IS NOT NULL
       AND (NOT only_auto OR e.paused_by = 'auto');
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE webhook.outbox o
       SET next_attempt_at = now()
     WHERE o.endpoint_id = resume_endpoint_id.id
       AND o.status = 'pending'
       AND o.next_attempt_at > now();
    PERFORM pg_notify('webhook_outbox', '');
    RETURN true;
END;
$$;

-- Resumes an endpoint by name (see webhook.resume_endpoint_id). Returns true
-- if it was paused.
CREATE FUNCTION webhook.resume_endpoint(endpoint text)
RETURNS boolean
LANGUAGE sql
AS $$
    SELECT webhook.resume_endpoint_id(webhook.endpoint_id_of(resume_endpoint.endpoint, 'webhook.resume_endpoint'))
$$;

-- webhook.endpoint_health gains the breaker's state, at the end so queries
-- that name the existing columns keep working: state is 'running', 'paused'
-- or 'disabled'; probes counts the last hour's probes (already part of
-- attempts).
CREATE OR REPLACE VIEW webhook.endpoint_health AS
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
       (array_agg(a.error ORDER BY a.started_at DESC) FILTER (WHERE a.error IS NOT NULL))[1] AS last_error,
       CASE WHEN NOT e.enabled THEN 'disabled' WHEN e.paused_at IS NOT NULL THEN 'paused' ELSE 'running' END AS state,
       e.paused_at,
       e.paused_by,
       e.failing_since,
       e.last_probe_at,
       count(a.id) FILTER (WHERE a.probe) AS probes
  FROM webhook.endpoints e
  LEFT JOIN (webhook.outbox o
             JOIN webhook.attempts a ON a.outbox_id = o.id AND a.started_at > now() - interval '1 hour')
         ON o.endpoint_id = e.endpoint_id
 GROUP BY e.endpoint_id, e.name, e.enabled;
