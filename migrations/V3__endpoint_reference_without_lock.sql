-- webhook.outbox.endpoint_id references webhook.endpoints without a foreign
-- key constraint. A foreign key makes every inserting transaction take a
-- KEY SHARE lock on the endpoint's row; with many concurrent writers all
-- enqueueing for the same endpoint, those locks pile into multixacts on one
-- row and the application's commits queue behind them (measured: 8 clients
-- doing top-ups fell to 6 % of their trigger-free throughput).
--
-- The reference stays sound without the lock: enqueue() only writes ids it
-- reads from webhook.endpoints, and endpoints can be neither deleted nor
-- renumbered (the relay disables them instead), which the triggers below
-- enforce.

ALTER TABLE webhook.outbox DROP CONSTRAINT outbox_endpoint_id_fkey;

CREATE FUNCTION webhook.endpoints_keep_ids()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'webhook.endpoints rows are never deleted (outbox rows refer to them): set enabled = false, or remove the endpoint from the config'
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF NEW.endpoint_id IS DISTINCT FROM OLD.endpoint_id THEN
        RAISE EXCEPTION 'webhook.endpoints.endpoint_id cannot change (outbox rows refer to it)'
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER endpoints_keep_ids
    BEFORE UPDATE OF endpoint_id OR DELETE ON webhook.endpoints
    FOR EACH ROW EXECUTE FUNCTION webhook.endpoints_keep_ids();

COMMENT ON COLUMN webhook.outbox.endpoint_id IS
    'References webhook.endpoints.endpoint_id (kept without a foreign key to spare writers a row lock; endpoints are never deleted)';
