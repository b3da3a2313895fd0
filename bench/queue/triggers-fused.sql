-- Measured and not taken (BENCHMARKS.md, seventh round): the credits trigger
-- writing the outbox row itself, in one INSERT ... SELECT over buyers and
-- webhook.endpoints, instead of a SELECT and a call of webhook.enqueue().
-- 8 % fewer instructions per top-up, but the routing (enabled endpoints,
-- their events, the wake-up switch, one id for every endpoint's copy) would
-- live in the file users adapt, which migrations cannot update.
--
--   EXTRA=bench/queue/triggers-fused.sql ONLY=topup bash bench/instructions.sh
--
-- Applied after sql/triggers.sql; replaces its credits function only.
CREATE OR REPLACE FUNCTION webhook_buyer_credits_events()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    old_balance  numeric := CASE WHEN TG_OP = 'UPDATE' THEN OLD.balance END;
    -- One id for every endpoint's copy, as webhook.enqueue makes it.
    new_event_id text := webhook.new_event_id();
BEGIN
    IF pg_current_xact_id_if_assigned() IS NULL THEN
        PERFORM pg_current_xact_id();
    END IF;
    IF NEW.balance > coalesce(old_balance, 0) THEN
        INSERT INTO webhook.outbox (event_id, event_code, payload, ordering_key, endpoint_id)
        SELECT new_event_id, 'add_credits', jsonb_build_object(
                   'buyerId',      NEW.buyer_id,
                   'buyerName',    b.business_name,
                   'postCodeList', to_jsonb(ARRAY(SELECT p.postcode FROM buyer_postcodes p
                                                   WHERE p.buyer_id = b.buyer_id ORDER BY p.postcode COLLATE "C")),
                   'topUpAmount',  trim_scale(NEW.balance - coalesce(old_balance, 0)),
                   'eventCode',    'add_credits'), NEW.buyer_id, e.endpoint_id
          FROM buyers b, webhook.endpoints e
         WHERE b.buyer_id = NEW.buyer_id
           AND e.enabled AND 'add_credits' = ANY (e.events)
           AND (NOT e.armed OR webhook.wake());
    ELSIF old_balance > 0 THEN
        INSERT INTO webhook.outbox (event_id, event_code, payload, ordering_key, endpoint_id)
        SELECT new_event_id, 'user_credits_zero', jsonb_build_object(
                   'buyerId',          NEW.buyer_id,
                   'businessName',     b.business_name,
                   'postCodeList', to_jsonb(ARRAY(SELECT p.postcode FROM buyer_postcodes p
                                                   WHERE p.buyer_id = b.buyer_id ORDER BY p.postcode COLLATE "C")),
                   'remainingCredits', trim_scale(NEW.balance),
                   'eventCode',        'user_credits_zero'), NEW.buyer_id, e.endpoint_id
          FROM buyers b, webhook.endpoints e
         WHERE b.buyer_id = NEW.buyer_id
           AND old_balance >= b.lead_cost
           AND NOT (NEW.balance > 0 AND NEW.balance >= b.lead_cost)
           AND e.enabled AND 'user_credits_zero' = ANY (e.events)
           AND (NOT e.armed OR webhook.wake());
    END IF;
    RETURN NULL;
END;
$$;
