-- Disarm endpoint $1's wake-up switch while the relay is busy with it, so
-- writing transactions stop paying for NOTIFY.
UPDATE webhook.endpoints SET armed = false WHERE endpoint_id = $1 AND armed
