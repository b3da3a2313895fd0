-- Event triggers for the reference schema (SPEC §2). Safe to apply to a database
-- that already has them, and to re-apply: functions are replaced, triggers are
-- dropped and created again, all in one transaction.
--
-- Needs the relay's schema first (`outbox-relay migrate`), for webhook.enqueue().
-- A DBA with other table names adapts this file only: the three functions below
-- build the payloads, webhook.enqueue() does the rest.

BEGIN;

-- The buyer's postcodes as the triggering transaction sees them now, sorted.
CREATE OR REPLACE FUNCTION webhook_buyer_postcode_list(p_buyer_id text)
RETURNS jsonb
LANGUAGE sql STABLE
AS $$
    SELECT coalesce(jsonb_agg(p.postcode ORDER BY p.postcode COLLATE "C"), '[]'::jsonb)
      FROM buyer_postcodes p
     WHERE p.buyer_id = p_buyer_id
$$;

-- user_credits_zero and add_credits, one row of buyer_credits at a time.
CREATE OR REPLACE FUNCTION webhook_buyer_credits_events()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    b            buyers%ROWTYPE;
    old_balance  numeric;
    could_afford boolean;
    can_afford   boolean;
BEGIN
    SELECT * INTO b FROM buyers WHERE buyer_id = NEW.buyer_id;
    IF NOT FOUND THEN
        RETURN NULL;  -- the foreign key makes this unreachable; stay silent if it is dropped
    END IF;

    -- add_credits: any increase of the balance, or a new row that starts above zero.
    IF TG_OP = 'INSERT' THEN
        old_balance := NULL;
        IF NEW.balance > 0 THEN
            PERFORM webhook.enqueue('add_credits', jsonb_build_object(
                'buyerId',      b.buyer_id,
                'buyerName',    b.business_name,
                'postCodeList', webhook_buyer_postcode_list(b.buyer_id),
                'topUpAmount',  trim_scale(NEW.balance),
                'eventCode',    'add_credits'), b.buyer_id);
        END IF;
    ELSE
        old_balance := OLD.balance;
        IF NEW.balance > OLD.balance THEN
            PERFORM webhook.enqueue('add_credits', jsonb_build_object(
                'buyerId',      b.buyer_id,
                'buyerName',    b.business_name,
                'postCodeList', webhook_buyer_postcode_list(b.buyer_id),
                'topUpAmount',  trim_scale(NEW.balance - OLD.balance),
                'eventCode',    'add_credits'), b.buyer_id);
        END IF;
    END IF;

    -- user_credits_zero: only on the crossing from "can afford a lead" to "cannot".
    -- Staying below does not fire again; a top-up back above re-arms it, because
    -- the next crossing starts from "can afford" again.
    IF old_balance IS NOT NULL THEN
        could_afford := old_balance > 0 AND old_balance >= b.lead_cost;
        can_afford   := NEW.balance > 0 AND NEW.balance >= b.lead_cost;
        IF could_afford AND NOT can_afford THEN
            PERFORM webhook.enqueue('user_credits_zero', jsonb_build_object(
                'buyerId',          b.buyer_id,
                'businessName',     b.business_name,
                'postCodeList',     webhook_buyer_postcode_list(b.buyer_id),
                'remainingCredits', trim_scale(NEW.balance),
                'eventCode',        'user_credits_zero'), b.buyer_id);
        END IF;
    END IF;
    RETURN NULL;
END;
$$;

-- post_code_change: runs at commit (deferred constraint trigger), once per
-- changed postcode row, and sends one event per buyer per transaction carrying
-- the list as committed. A transaction-local setting remembers which buyers
-- already had their event in this transaction.
CREATE OR REPLACE FUNCTION webhook_buyer_postcodes_events()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    affected   text[];
    v_buyer_id text;
    done_key   text;
    b          buyers%ROWTYPE;
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
        done_key := 'webhook_postcode_event.b' || md5(v_buyer_id);
        CONTINUE WHEN current_setting(done_key, true) = 'sent';
        PERFORM set_config(done_key, 'sent', true);

        -- A buyer deleted in this same transaction has no postcodes and no name
        -- left: that is the end of the buyer, not a postcode change.
        SELECT * INTO b FROM buyers WHERE buyer_id = v_buyer_id;
        CONTINUE WHEN NOT FOUND;

        PERFORM webhook.enqueue('post_code_change', jsonb_build_object(
            'buyerId',      b.buyer_id,
            'businessName', b.business_name,
            'postCodeList', webhook_buyer_postcode_list(b.buyer_id),
            'eventCode',    'post_code_change'), b.buyer_id);
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
