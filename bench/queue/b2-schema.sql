-- Prototype B2: B without the write-back onto the outbox row. The attempt
-- row is the outcome (it says delivered, retry or dead); the outbox row is
-- written once, by the writer, and its status is read from its last attempt.
ALTER TABLE webhook.attempts ADD COLUMN outcome webhook.delivery_status;
CREATE OR REPLACE FUNCTION bench_left() RETURNS bigint LANGUAGE sql AS $$
    SELECT count(*) FROM webhook.outbox o
     WHERE NOT EXISTS (SELECT 1 FROM webhook.attempts a WHERE a.outbox_id = o.id AND a.outcome = 'delivered')
$$;
