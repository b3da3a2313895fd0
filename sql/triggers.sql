-- Event triggers for the reference schema (SPEC §2). Safe to apply to a database
-- that already has them, and to re-apply: functions are replaced, triggers are
-- dropped and created again, all in one transaction.
--
-- Needs the relay's schema first (`outbox-relay migrate`), for webhook.enqueue().
-- A DBA with other table names adapts this file only: the three functions below
-- build the payloads, webhook.enqueue() does the rest.

BEGIN;

-- An older version of this file had a helper SQL function for the postcode
-- list. SQL functions are planned again at every call; the triggers below
-- read the list in the same statement as the buyer instead.
DROP FUNCTION IF EXISTS webhook_buyer_postcode_list(text);

-- user_credits_zero and add_credits, one row of buyer_credits at a time.
-- Everything the events need is read in one statement (plpgsql keeps its
-- plan), and the postcode list only when an event fires. The list is an
-- ARRAY(subquery) turned into JSON: no aggregate node to set up, about 2 %
-- fewer instructions per top-up than an ordered jsonb_agg (BENCHMARKS.md).
CREATE OR REPLACE FUNCTION webhook_buyer_credits_events()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    -- webhook.enqueue's answer (the event id), taken by an assignment: PL/pgSQL
    -- evaluates a function call assigned to a variable without starting the
    -- executor, which a PERFORM (a SELECT) does (docs/queue.md, b-final).
    enqueued     text;
    old_balance  numeric := CASE WHEN TG_OP = 'UPDATE' THEN OLD.balance END;
    -- add_credits: any increase of the balance, or a new row that starts above zero.
    added        boolean := NEW.balance > coalesce(old_balance, 0);
    crossed      boolean;
    name         text;
    codes        jsonb;
BEGIN
    -- user_credits_zero: only on the crossing from "can afford a lead" to
    -- "cannot". Staying below does not fire again; a top-up back above re-arms
    -- it, because the next crossing starts from "can afford" again. A new row
    -- has no "before", so it never crosses.
    SELECT b.business_name,
           old_balance > 0 AND old_balance >= b.lead_cost
               AND NOT (NEW.balance > 0 AND NEW.balance >= b.lead_cost),
           CASE WHEN added
                  OR (old_balance > 0 AND old_balance >= b.lead_cost
                      AND NOT (NEW.balance > 0 AND NEW.balance >= b.lead_cost))
                THEN to_jsonb(ARRAY(SELECT p.postcode
                                      FROM buyer_postcodes p
                                     WHERE p.buyer_id = b.buyer_id
                                     ORDER BY p.postcode COLLATE "C"))
           END
      INTO name, crossed, codes
      FROM buyers b
     WHERE b.buyer_id = NEW.buyer_id;
    IF NOT FOUND THEN
        RETURN NULL;  -- the foreign key makes this unreachable; stay silent if it is dropped
    END IF;

    IF added THEN
        enqueued := webhook.enqueue('add_credits', jsonb_build_object(
            'buyerId',      NEW.buyer_id,
            'buyerName',    name,
            'postCodeList', codes,
            'topUpAmount',  trim_scale(NEW.balance - coalesce(old_balance, 0)),
            'eventCode',    'add_credits'), NEW.buyer_id);
    END IF;
    IF crossed THEN
        enqueued := webhook.enqueue('user_credits_zero', jsonb_build_object(
            'buyerId',          NEW.buyer_id,
            'businessName',     name,
            'postCodeList',     codes,
            'remainingCredits', trim_scale(NEW.balance),
            'eventCode',        'user_credits_zero'), NEW.buyer_id);
    END IF;
    RETURN NULL;
END;
$$;

-- post_code_change: runs at commit (deferred constraint trigger), once per
-- changed postcode row, and sends one event per buyer per transaction carrying
-- the list as committed. The event's id is derived from the transaction and
-- the buyer (webhook.transaction_event_id), so the outbox row written for the
-- buyer's first changed row is what the later rows find: one index probe
-- each, whatever the number of buyers already changed (docs/dba.md, "Bulk
-- changes"). An older version kept a custom setting per buyer, which made a
-- bulk change cost time quadratic in the buyers.
--
-- The planner settings keep the probe on its index: plpgsql keeps the plan it
-- made for the first rows, and at the start of a bulk change the outbox may
-- be nearly empty, where a sequential scan looks cheaper and then runs once
-- per row over a growing table. With sequential scans off the other plans
-- cost enough to be compiled by JIT at every call, hence jit = off.
CREATE OR REPLACE FUNCTION webhook_buyer_postcodes_events()
RETURNS trigger
LANGUAGE plpgsql
SET enable_seqscan = off
SET jit = off
AS $$
DECLARE
    enqueued   text;  -- webhook.enqueue's answer, taken by an assignment (above)
    affected   text[];
    v_buyer_id text;
    v_event_id text;
    name       text;
    codes      jsonb;
BEGIN
    -- An UPDATE that moves a postcode to another buyer changes both buyers.
    IF TG_OP = 'DELETE' THEN
        affected := ARRAY[OLD.buyer_id];
    ELSIF TG_OP = 'UPDATE' AND OLD.buyer_id IS DISTINCT FROM NEW.buyer_id THEN
        affected := ARRAY[NEW.buyer_id, OLD.buyer_id];
    ELSE
        affected := ARRAY[NEW.buyer_id];
    END IF;

    FOREACH v_buyer_id IN ARRAY affected LOOP
        v_event_id := webhook.transaction_event_id('post_code_change/' || v_buyer_id);
        CONTINUE WHEN EXISTS (SELECT 1 FROM webhook.outbox o WHERE o.event_id = v_event_id);

        -- A buyer deleted in this same transaction has no postcodes and no name
        -- left: that is the end of the buyer, not a postcode change.
        SELECT b.business_name,
               to_jsonb(ARRAY(SELECT p.postcode
                                FROM buyer_postcodes p
                               WHERE p.buyer_id = b.buyer_id
                               ORDER BY p.postcode COLLATE "C"))
          INTO name, codes
          FROM buyers b
         WHERE b.buyer_id = v_buyer_id;
        CONTINUE WHEN NOT FOUND;

        enqueued := webhook.enqueue('post_code_change', jsonb_build_object(
            'buyerId',      v_buyer_id,
            'businessName', name,
            'postCodeList', codes,
            'eventCode',    'post_code_change'), v_buyer_id, v_event_id);
    END LOOP;
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS webhook_events ON buyer_credits;
CREATE TRIGGER webhook_events
    AFTER INSERT OR UPDATE OF balance ON buyer_credits
    FOR EACH ROW EXECUTE FUNCTION webhook_buyer_credits_events();

DROP TRIGGER IF EXISTS webhook_events ON buyer_postcodes;
CREATE CONSTRAINT TRIGGER webhook_events
    AFTER INSERT OR UPDATE OR DELETE ON buyer_postcodes
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION webhook_buyer_postcodes_events();

COMMIT;
