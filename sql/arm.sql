-- Arm endpoint $1's wake-up switch: from now on, writing transactions that
-- enqueue for it send a NOTIFY (docs/wakeup.md).
INSERT INTO webhook.wakeup AS w (endpoint_id, armed)
VALUES ($1, true)
ON CONFLICT (endpoint_id) DO UPDATE SET armed = true WHERE NOT w.armed
